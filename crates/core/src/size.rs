//! Human sizes: `512M`, `2G`, `1.5GiB`, `8192` (a bare number is MiB, the unit
//! people mean for VM memory and disks). Suffixes are powers of 1024.

/// Parses a size into bytes.
pub fn parse(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512M, 2G or 8192 (MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1 << 20,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use K, M, G or T)"
            ))
        }
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size {s:?}: out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a size and returns whole MiB, refusing sizes that are not a whole
/// number of MiB (Firecracker takes memory in MiB).
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let b = parse(s)?;
    if b % (1 << 20) != 0 {
        return Err(format!("size {s:?} is not a whole number of MiB"));
    }
    Ok(b >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("512M").unwrap(), 512 << 20);
        assert_eq!(parse("2G").unwrap(), 2 << 30);
        assert_eq!(parse("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse("8192").unwrap(), 8 << 30);
        assert_eq!(parse("4096b").unwrap(), 4096);
        assert_eq!(parse_mib("1G").unwrap(), 1024);
        assert!(parse("").is_err());
        assert!(parse("12Q").is_err());
        assert!(parse("-1G").is_err());
        assert!(parse_mib("1000b").is_err());
    }
}
