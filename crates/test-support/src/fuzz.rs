//! A small deterministic fuzz driver for unit tests of parsers: a seeded xorshift
//! generator and byte mutations. Not coverage-guided (`cargo fuzz` is, in
//! `fuzz/`); it runs on every `cargo test` in milliseconds and gives the same
//! inputs every time, so a failure reproduces.

/// One step of xorshift64 on `state` (non-zero): the generator every seeded test
/// of the workspace uses, so that a sequence written down in one reproduces in all.
pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// A xorshift64 generator: fast, seeded, reproducible (not for cryptography).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        xorshift(&mut self.0)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// One random edit of `input`: flip a bit, replace, insert or delete a byte,
    /// truncate, or duplicate a slice. Keeps inputs of any length, empty included.
    pub fn mutate(&mut self, input: &mut Vec<u8>) {
        let len = input.len();
        match self.below(6) {
            0 if len > 0 => {
                let i = self.below(len);
                input[i] ^= 1 << self.below(8);
            }
            1 if len > 0 => {
                let i = self.below(len);
                input[i] = self.byte();
            }
            2 => {
                let i = self.below(len + 1);
                let b = self.byte();
                input.insert(i, b);
            }
            3 if len > 0 => {
                let i = self.below(len);
                input.remove(i);
            }
            4 => input.truncate(self.below(len + 1)),
            _ if len > 0 => {
                let a = self.below(len);
                let b = a + self.below(len - a + 1);
                let slice = input[a..b].to_vec();
                let at = self.below(input.len() + 1);
                input.splice(at..at, slice);
            }
            _ => input.push(self.byte()),
        }
    }

    /// `base` with 1 to `max_edits` random edits.
    pub fn mutated(&mut self, base: &[u8], max_edits: usize) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..1 + self.below(max_edits.max(1)) {
            self.mutate(&mut v);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let (mut a, mut b) = (Rng::new(5), Rng::new(5));
        for _ in 0..100 {
            assert_eq!(a.mutated(b"seed input", 4), b.mutated(b"seed input", 4));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert!(Rng::new(0).next_u64() != 0);
    }

    #[test]
    fn mutations_reach_every_length() {
        let mut r = Rng::new(9);
        let mut lens = std::collections::HashSet::new();
        for _ in 0..2000 {
            lens.insert(r.mutated(b"abcdefgh", 3).len());
        }
        assert!(lens.contains(&0) && lens.iter().any(|&l| l > 8));
    }
}
