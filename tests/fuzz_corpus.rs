//! Replays the committed fuzz corpus of the store protocol through the same
//! invariant checks the fuzz target runs (`fuzz/corpus/store_protocol`).

use std::path::Path;

#[test]
fn store_protocol_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/store_protocol");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        braid::store::protocol::fuzz_invariants(&data);
        replayed += 1;
    }
    assert!(
        replayed >= 20,
        "only {replayed} corpus files in {}",
        dir.display()
    );
}
