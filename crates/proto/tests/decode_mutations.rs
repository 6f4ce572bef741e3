//! A deterministic, always-on cousin of the cargo-fuzz target: mutates valid
//! requests and random bytes many times and checks the decoder never panics
//! and always produces either requests or a serialisable error response.

use banger_proto::jsonrpc::{decode, encode_responses, Incoming};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":1,"method":"daemon.status","params":{}}"#,
    r#"{"jsonrpc":"2.0","method":"op.wait","params":{"id":"x","after_revision":3}}"#,
    r#"[{"jsonrpc":"2.0","id":"a","method":"kernel.list"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#,
    r#"{"jsonrpc":"2.0","id":null,"method":"image.register.begin","params":{"rootfs":{"fd":0}}}"#,
];

const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"-1",
    b"1e999",
    b"\\u0000",
    b"\xff",
    b"\"jsonrpc\"",
    b"\"2.0\"",
    b"\"id\"",
    b"\"method\"",
    b"\"params\"",
    b"[]",
    b"{}",
];

fn check(bytes: &[u8]) {
    match decode(bytes) {
        Err(resp) => {
            let line = encode_responses(&[resp], false);
            serde_json::from_slice::<serde_json::Value>(&line).unwrap();
        }
        Ok(Incoming::Single(r)) => {
            if let Err(resp) = r {
                encode_responses(&[resp], false);
            }
        }
        Ok(Incoming::Batch(items)) => {
            assert!(!items.is_empty());
            for r in items.into_iter().flat_map(Result::err) {
                encode_responses(&[r], false);
            }
        }
    }
}

#[test]
fn mutated_requests_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for i in 0..30_000 {
        let mut b = SEEDS[i % SEEDS.len()].as_bytes().to_vec();
        for _ in 0..1 + rng.below(6) {
            let pos = rng.below(b.len() + 1);
            match rng.below(4) {
                0 if !b.is_empty() => {
                    let p = pos.min(b.len() - 1);
                    b[p] = rng.next() as u8;
                }
                1 if pos < b.len() => {
                    let end = (pos + rng.below(8)).min(b.len());
                    b.drain(pos..end);
                }
                2 => {
                    let t = TOKENS[rng.below(TOKENS.len())];
                    b.splice(pos..pos, t.iter().copied());
                }
                _ => {
                    let n = rng.below(4);
                    b.splice(pos..pos, (0..n).map(|_| rng.next() as u8));
                }
            }
        }
        check(&b);
    }
}

#[test]
fn random_bytes_and_deep_nesting_never_panic() {
    let mut rng = XorShift(42);
    for _ in 0..5_000 {
        let len = rng.below(64);
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        check(&b);
    }
    // serde_json's recursion limit turns this into a parse error, not a crash.
    let deep = "[".repeat(100_000);
    check(deep.as_bytes());
    let deep_obj = r#"{"a":"#.repeat(50_000);
    check(deep_obj.as_bytes());
}
