//! The template builds when copied out of this repository: its `Cargo.toml` names every
//! dependency in full (nothing inherited from the workspace), so a copy needs only its
//! chassis `path`s pointed at a checkout (or, once published, nothing at all).
//!
//! The copy, renamed as a user would, is checked (`cargo check`: resolved, type-checked and
//! borrow-checked, everything but code generation and linking, which do not depend on where
//! the manifest lives) with this workspace's lock file and target directory, so it compiles
//! only itself and what its own feature set changes, not the whole tree again. A full build of
//! the copy would take minutes of the test suite for what the check already proves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() != "target" {
                copy_dir(&entry.path(), &target);
            }
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_copy_outside_the_workspace_compiles_after_pointing_its_paths() {
    let template = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace: PathBuf = template.join("../..").canonicalize().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let copy = outside.path().join("my-service");
    copy_dir(template, &copy);

    // What a user edits: the name, and where the chassis crates are.
    let manifest = std::fs::read_to_string(copy.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("workspace = true") && !manifest.contains(".workspace"),
        "the template must not inherit from the workspace:\n{manifest}"
    );
    let pointed = manifest
        .replace("name = \"minimal-service\"", "name = \"my-service\"")
        .replace(
            "path = \"../../",
            &format!("path = \"{}/", workspace.display()),
        );
    assert_ne!(
        pointed, manifest,
        "the chassis dependencies are path dependencies"
    );
    std::fs::write(copy.join("Cargo.toml"), pointed).unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), copy.join("Cargo.lock")).unwrap();

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let out = Command::new(env!("CARGO"))
        .args(["check", "--offline", "--bins", "--quiet"])
        .current_dir(&copy)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "the copied template did not compile:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
