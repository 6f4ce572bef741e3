//! Generated VM names: `adjective-noun`, readable and pronounceable, like
//! `brave-otter`; a numeric suffix only when every pair is taken.

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
    "fancy", "fierce", "fuzzy", "gentle", "glad", "golden", "happy", "hardy", "jolly", "keen",
    "kind", "lively", "lucky", "mellow", "merry", "mighty", "nimble", "noble", "plucky", "proud",
    "quick", "quiet", "rapid", "ready", "rosy", "rustic", "shiny", "silent", "sleek", "smooth",
    "snug", "sturdy", "sunny", "swift", "tidy", "vivid", "warm", "wise", "witty", "zesty",
];

const NOUNS: &[&str] = &[
    "badger", "beacon", "bison", "cedar", "comet", "coral", "crane", "delta", "falcon", "fern",
    "finch", "fjord", "gecko", "glacier", "harbor", "heron", "ibis", "jaguar", "kestrel", "koala",
    "lagoon", "lemur", "lynx", "maple", "meadow", "mesa", "otter", "panda", "pebble", "pine",
    "puffin", "quartz", "raven", "reef", "robin", "sequoia", "sparrow", "spruce", "summit",
    "tapir", "thistle", "tundra", "valley", "walrus", "willow", "wombat", "yak", "zebra", "canyon",
    "dune",
];

/// A name for which `taken` is false. `seed` picks the starting pair.
pub fn generate(seed: u64, taken: impl Fn(&str) -> bool) -> String {
    let pairs = ADJECTIVES.len() * NOUNS.len();
    let start = (seed % pairs as u64) as usize;
    for i in 0..pairs {
        let k = (start + i * 7919) % pairs; // a stride coprime with `pairs`
        let name = format!("{}-{}", ADJECTIVES[k / NOUNS.len()], NOUNS[k % NOUNS.len()]);
        if !taken(&name) {
            return name;
        }
    }
    let base = format!(
        "{}-{}",
        ADJECTIVES[start / NOUNS.len()],
        NOUNS[start % NOUNS.len()]
    );
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken(n))
        .expect("an unbounded range yields a free name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::names::validate_name;

    #[test]
    fn names_are_valid_and_avoid_taken_ones() {
        let n = generate(42, |_| false);
        validate_name(&n).unwrap();
        let m = generate(42, |x| x == n);
        assert_ne!(n, m);
        validate_name(&m).unwrap();
    }

    #[test]
    fn falls_back_to_a_suffix() {
        let n = generate(1, |x| !x.ends_with("-2"));
        assert!(n.ends_with("-2"), "{n}");
        validate_name(&n).unwrap();
    }
}
