//! A snapshot's `manifest.json` as the datastore loads it from disk
//! (`Manifest::load` reads the file and calls `Manifest::decode`), from a
//! damaged or hostile datastore: any bytes give a manifest or an error,
//! never a panic; what decodes re-encodes (as `Manifest::store` writes
//! it) to bytes that decode to the same manifest, and the questions the
//! server asks of a manifest never panic.
#![no_main]

use hoard_datastore::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode(data, "vm/1/2026-11-01T00:00:00Z") else {
        return;
    };
    let _ = m.chunk_class();
    let _ = m.usable_as_base();
    for f in &m.files {
        assert!(m.file(&f.name).is_some());
    }
    // Pretty printing may grow a manifest past the size limit only if
    // its input was near it; the fuzzer's inputs are far below.
    if let Ok(raw) = m.encode() {
        let again = Manifest::decode(&raw, "re-encoded").expect("a stored manifest decodes");
        assert_eq!(again, m);
        assert_eq!(again.encode().expect("encodes again"), raw);
    }
});
