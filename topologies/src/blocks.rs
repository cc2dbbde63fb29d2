//! Block arithmetic shared by the generators (64-bit throughout).

/// Prefix sums of `blocks`: `offsets[r]` is where block `r` starts; the last
/// entry (index `blocks.len()`) is the total.
pub fn block_offsets(blocks: &[u64]) -> Vec<u64> {
    let mut offsets = Vec::with_capacity(blocks.len() + 1);
    let mut at = 0u64;
    offsets.push(0);
    for &b in blocks {
        at += b;
        offsets.push(at);
    }
    offsets
}

/// Splits `count` elements into `parts` contiguous blocks whose sizes differ
/// by at most one (the first `count % parts` blocks get the extra element).
pub fn even_blocks(count: u64, parts: usize) -> Vec<u64> {
    let parts64 = parts as u64;
    let base = count / parts64;
    let extra = count % parts64;
    (0..parts64).map(|i| base + u64::from(i < extra)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_blocks_cover_count_past_32_bits() {
        let count = 3 * (1u64 << 31) + 7;
        let b = even_blocks(count, 5);
        assert_eq!(b.iter().sum::<u64>(), count);
        assert!(b.iter().max().unwrap() - b.iter().min().unwrap() <= 1);
        let off = block_offsets(&b);
        assert_eq!(*off.last().unwrap(), count);
        assert_eq!(off[1], b[0]);
    }
}
