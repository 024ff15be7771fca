//! Replays the fuzz corpus (`fuzz/corpus/submit`) and random programs
//! through the fuzz harness, so every `cargo test` runs the fuzz target's
//! invariants without a fuzzer.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, missing_docs)]
mod harness;

use proptest::prelude::*;

#[test]
fn corpus_replays_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/submit");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        harness::run(&data);
        n += 1;
    }
    assert!(n > 0, "empty corpus in {dir:?}");
}

/// Replays the inputs in `$AIO_FUZZ_REPLAY` (a fuzzer's crash directory,
/// say) one by one, naming the file that fails.
#[test]
fn replay_dir_from_env() {
    let Some(dir) = std::env::var_os("AIO_FUZZ_REPLAY") else {
        return;
    };
    for entry in std::fs::read_dir(dir).expect("replay directory") {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "README.txt") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        eprintln!("replaying {path:?}");
        harness::run(&data);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_programs_keep_the_invariants(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        harness::run(&data);
    }
}
