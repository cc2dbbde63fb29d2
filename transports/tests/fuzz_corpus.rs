//! Replays the committed fuzz corpus of the handshake decoders through the
//! same invariant checks the fuzz target runs (`fuzz/corpus/handshake`).

use std::path::Path;

#[test]
fn handshake_corpus_replays_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/handshake");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        braid_transports::tcp::handshake::fuzz_invariants(&data);
        replayed += 1;
    }
    assert!(
        replayed >= 5,
        "only {replayed} corpus files in {}",
        dir.display()
    );
}
