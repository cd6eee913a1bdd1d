//! Sizes a person has to read stay bounded: no non-test Rust file over 700 lines and no
//! function over 100 lines outside tests, as `ops/scripts/house.py` measures them.

use std::path::Path;
use std::process::Command;

#[test]
fn no_file_or_function_outgrows_what_a_person_reads() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("ops/scripts/house.py"))
        .arg("--check")
        .arg("--root")
        .arg(&root)
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "over the limits:\n{report}");
    Ok(())
}
