//! IPv4 subnet arithmetic for the bridge: parsing the CIDR, the gateway
//! (first host address, held by the bridge), and picking guest addresses.

use std::net::Ipv4Addr;

/// A parsed `a.b.c.d/len` (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR like 172.16.213.0/24"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "{s:?}: the prefix must be 8..30 (a /30 holds one guest)"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    /// The bridge's address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !u32::from(self.mask()))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.network)
    }

    /// How many guests fit (all host addresses but the gateway).
    pub fn capacity(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 3
    }

    /// The lowest guest address not in `taken` (None: exhausted).
    pub fn first_free(&self, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        let mut used: Vec<u32> = taken.iter().map(|&a| u32::from(a)).collect();
        used.sort_unstable();
        (first..=last)
            .find(|a| used.binary_search(a).is_err())
            .map(Ipv4Addr::from)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let s = Subnet::parse("172.16.213.77/24").unwrap();
        assert_eq!(s.network, Ipv4Addr::new(172, 16, 213, 0));
        assert_eq!(s.gateway(), Ipv4Addr::new(172, 16, 213, 1));
        assert_eq!(s.broadcast(), Ipv4Addr::new(172, 16, 213, 255));
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.capacity(), 253);
        assert!(s.contains(Ipv4Addr::new(172, 16, 213, 9)));
        assert!(!s.contains(Ipv4Addr::new(172, 16, 214, 9)));
        assert_eq!(s.to_string(), "172.16.213.0/24");
    }

    #[test]
    fn allocation_fills_gaps_and_exhausts() {
        let s = Subnet::parse("10.9.0.0/29").unwrap(); // .1 gw, .2-.6 guests, .7 bcast
        assert_eq!(s.capacity(), 5);
        let mut taken = Vec::new();
        for _ in 0..5 {
            let ip = s.first_free(&taken).unwrap();
            taken.push(ip);
        }
        assert_eq!(taken.last(), Some(&Ipv4Addr::new(10, 9, 0, 6)));
        assert_eq!(s.first_free(&taken), None);
        taken.retain(|&a| a != Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(s.first_free(&taken), Some(Ipv4Addr::new(10, 9, 0, 3)));
        let tiny = Subnet::parse("10.9.0.0/30").unwrap();
        assert_eq!(tiny.first_free(&[]), Some(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(tiny.first_free(&[Ipv4Addr::new(10, 9, 0, 2)]), None);
    }

    #[test]
    fn bad_cidrs() {
        for s in [
            "10.0.0.0",
            "10.0.0.0/31",
            "10.0.0.0/4",
            "x/24",
            "10.0.0.0/y",
        ] {
            assert!(Subnet::parse(s).is_err(), "{s}");
        }
    }
}
