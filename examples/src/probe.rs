//! The byte pattern the `probe-guest bytes <seed> <len>` command writes,
//! shared with the tests that check it arrives byte for byte.

/// `len` bytes of xorshift64 from `seed`, one byte per step, with the last
/// byte forced to `b'$'` (never a newline, so the output ends mid-line, as
/// a crashing guest's does). Not valid UTF-8 in general.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    if let Some(last) = v.last_mut() {
        *last = b'$';
    }
    v
}

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn deterministic_and_ends_without_newline() {
        let a = pattern(7, 1000);
        assert_eq!(a, pattern(7, 1000));
        assert_ne!(a, pattern(8, 1000));
        assert_eq!(a.last(), Some(&b'$'));
        assert!(std::str::from_utf8(&a).is_err());
    }
}
