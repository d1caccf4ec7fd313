//! The checked-in JSON Schemas must equal what the Rust types generate.
//! Run with `SPOOL_UPDATE_SCHEMAS=1` to rewrite them after a deliberate change.

use std::path::Path;

#[test]
fn json_schema_files_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("SPOOL_UPDATE_SCHEMAS").is_some();
    let generated = spool_schemas::json_schemas();
    let mut drifted = Vec::new();
    for (name, text) in &generated {
        let path = dir.join(name);
        if update {
            std::fs::write(&path, text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            drifted.push(name.clone());
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = generated.iter().map(|(name, _)| name.clone()).collect();
    expected.sort();
    assert!(
        drifted.is_empty(),
        "schemas/json drifted from the Rust types: {drifted:?}; rerun with SPOOL_UPDATE_SCHEMAS=1"
    );
    assert_eq!(on_disk, expected, "stale or missing files in schemas/json");
}
