//! A SnapshotEntry payload as the client reads it: any bytes give a
//! snapshot or an error, never a panic, and the choices made from a
//! parsed entry (base, latest, file lookup) never panic either; nor does
//! checking its seal against a key.
#![no_main]

use hoard_client::requests::{display_name, find_base, find_file, latest, parse_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = hoard_codec::Key::from_secret(&[7u8; 32]);
    let _ = parse_entry(data, Some(&key));
    if let Ok(listed) = parse_entry(data, None) {
        let group = listed.path.group.clone();
        let later = hoard_types::SnapshotPath {
            group: group.clone(),
            time: hoard_types::SnapshotTime::from_epoch(4_102_444_800).unwrap(),
        };
        let list = vec![listed];
        for f in &list[0].manifest.files {
            let _ = display_name(f);
            let _ = find_base(&list, &group, &later, &f.name, false);
            let _ = find_base(&list, &group, &later, &f.name, true);
            let _ = latest(&list, &group, &f.name, false);
            let _ = latest(&list, &group, &f.name, true);
        }
        let _ = find_file(&list[0].manifest, "disk.img");
    }
});
