//! Read planning: merge the reads of one poll into as few requests as the device allows.
//!
//! The idea is Telegraf's `max_insert`: reading a few unused registers between two wanted ones
//! is cheaper than a second transaction (a serial round trip costs tens of milliseconds).

use crate::modbus::value::Table;

/// One value to read: `key` is the caller's handle (an index into its own list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadItem {
    pub key: usize,
    pub table: Table,
    /// 0-based protocol address.
    pub address: u16,
    /// Registers (or bits); 0 is treated as 1.
    pub count: u16,
}

/// One request: `items` holds `(key, offset of the item's first register within the block)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    pub items: Vec<(usize, u16)>,
}

/// Groups items into blocks.
///
/// Items of different tables never share a block. Two items share a block when the gap of
/// unread registers between them is at most `max_gap` and the merged block stays within
/// `max_count`; an item larger than `max_count` gets a block of its own (the device will
/// probably refuse it, which is the driver's error to report, not ours to hide). Overlapping
/// items are fine. Blocks come out sorted by table and address, items by address then key,
/// whatever the input order.
pub fn plan_reads(items: &[ReadItem], max_gap: u16, max_count: u16) -> Vec<ReadBlock> {
    let max_count = u32::from(max_count.max(1));
    let mut sorted: Vec<ReadItem> = items.to_vec();
    sorted.sort_by_key(|i| (i.table, i.address, i.key));

    let mut blocks: Vec<ReadBlock> = Vec::new();
    // End (exclusive) of the current block, as u32 so that address + count cannot overflow.
    let mut end: u32 = 0;
    for item in sorted {
        let count = u32::from(item.count.max(1));
        let item_end = u32::from(item.address) + count;
        if let Some(block) = blocks.last_mut() {
            let start = u32::from(block.address);
            let gap = u32::from(item.address).saturating_sub(end);
            let merged_end = end.max(item_end);
            if block.table == item.table
                && gap <= u32::from(max_gap)
                && merged_end - start <= max_count
            {
                block.items.push((item.key, item.address - block.address));
                end = merged_end;
                // Fits in u16: merged_end - start <= max_count <= u16::MAX.
                block.count = (end - start) as u16;
                continue;
            }
        }
        end = item_end;
        blocks.push(ReadBlock {
            table: item.table,
            address: item.address,
            // An address near 65535 with a large count cannot exist on the wire anyway; clamp.
            count: count.min(u32::from(u16::MAX)) as u16,
            items: vec![(item.key, 0)],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: usize, table: Table, address: u16, count: u16) -> ReadItem {
        ReadItem {
            key,
            table,
            address,
            count,
        }
    }

    #[test]
    fn merges_within_gap_and_splits_beyond() {
        let items = [
            item(0, Table::Holding, 2820, 2),
            item(1, Table::Holding, 2810, 2),
            item(2, Table::Holding, 2730, 1),
            item(3, Table::Holding, 2782, 2),
        ];
        let blocks = plan_reads(&items, 10, 100);
        assert_eq!(
            blocks,
            vec![
                ReadBlock {
                    table: Table::Holding,
                    address: 2730,
                    count: 1,
                    items: vec![(2, 0)],
                },
                ReadBlock {
                    table: Table::Holding,
                    address: 2782,
                    count: 2,
                    items: vec![(3, 0)],
                },
                ReadBlock {
                    table: Table::Holding,
                    address: 2810,
                    count: 12,
                    items: vec![(1, 0), (0, 10)],
                },
            ]
        );
    }

    #[test]
    fn tables_never_merge() {
        let items = [
            item(0, Table::Coil, 0, 1),
            item(1, Table::DiscreteInput, 0, 1),
            item(2, Table::Holding, 1, 1),
            item(3, Table::Input, 1, 1),
            item(4, Table::Coil, 1, 1),
        ];
        let blocks = plan_reads(&items, 100, 100);
        assert_eq!(blocks.len(), 4);
        assert_eq!(blocks[0].items, vec![(0, 0), (4, 1)]);
        assert_eq!(blocks[0].count, 2);
    }

    #[test]
    fn overlapping_and_oversized_items() {
        let items = [
            item(0, Table::Holding, 10, 4),
            item(1, Table::Holding, 12, 2),
            item(2, Table::Holding, 100, 200),
            item(3, Table::Holding, 110, 1),
        ];
        let blocks = plan_reads(&items, 5, 50);
        assert_eq!(blocks[0].address, 10);
        assert_eq!(blocks[0].count, 4);
        assert_eq!(blocks[0].items, vec![(0, 0), (1, 2)]);
        assert_eq!(blocks[1].count, 200);
        assert_eq!(blocks[1].items, vec![(2, 0)]);
        assert_eq!(blocks[2].items, vec![(3, 0)]);
    }

    #[test]
    fn top_of_address_space_does_not_overflow() {
        let items = [
            item(0, Table::Input, 65534, 2),
            item(1, Table::Input, 65535, 1),
        ];
        let blocks = plan_reads(&items, 0, 10);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].count, 2);
    }

    /// A tiny deterministic generator so the property loops need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, below: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % below
        }
    }

    #[test]
    fn properties_hold_for_random_polls() {
        let tables = [
            Table::Coil,
            Table::DiscreteInput,
            Table::Holding,
            Table::Input,
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let n = rng.next(20) as usize;
            let max_gap = rng.next(20) as u16;
            let max_count = 1 + rng.next(60) as u16;
            let items: Vec<ReadItem> = (0..n)
                .map(|key| {
                    item(
                        key,
                        tables[rng.next(4) as usize],
                        rng.next(300) as u16,
                        1 + rng.next(8) as u16,
                    )
                })
                .collect();
            let blocks = plan_reads(&items, max_gap, max_count);

            // Every item appears exactly once, in a block of its table that covers it.
            let mut seen = vec![0; n];
            for b in &blocks {
                assert!(b.count > 0);
                for &(key, off) in &b.items {
                    seen[key] += 1;
                    let it = items[key];
                    assert_eq!(it.table, b.table);
                    assert_eq!(u32::from(b.address) + u32::from(off), u32::from(it.address));
                    assert!(off + it.count <= b.count, "item {it:?} outside {b:?}");
                    if b.items.len() > 1 {
                        assert!(b.count <= max_count, "{b:?} exceeds {max_count}");
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1));

            // Deterministic: shuffled input, same plan.
            let mut reversed = items.clone();
            reversed.reverse();
            assert_eq!(plan_reads(&reversed, max_gap, max_count), blocks);

            // Sorted output, and two neighbouring blocks of one table were not mergeable.
            for w in blocks.windows(2) {
                assert!((w[0].table, w[0].address) <= (w[1].table, w[1].address));
                if w[0].table == w[1].table {
                    let end0 = u32::from(w[0].address) + u32::from(w[0].count);
                    let gap = u32::from(w[1].address).saturating_sub(end0);
                    let first = items[w[1].items[0].0];
                    let merged = end0.max(u32::from(first.address) + u32::from(first.count))
                        - u32::from(w[0].address);
                    assert!(gap > u32::from(max_gap) || merged > u32::from(max_count));
                }
            }
        }
    }
}
