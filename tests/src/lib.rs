//! Helpers shared by the end-to-end tests: where the `moe-node` binary and the reference
//! fixtures are, and how to run the binary.
//!
//! `env!("CARGO_BIN_EXE_moe-node")` only exists inside the crate that defines the binary, so
//! tests in this crate find it next to their own executable instead: a test runs from
//! `target/<profile>/deps/`, and the binary of the same profile is `target/<profile>/moe-node`.
//! [`moe_node_bin`] runs `cargo build -p moe-node` for that profile once per test process
//! (a no-op when it is up to date) so the tests never run a stale binary. Set
//! `MOE_NODE_BIN=/path/to/moe-node` to skip the build and test that binary instead.
//!
//! ```no_run
//! let out = moe_tests::moe_node(&["--version"]);
//! assert!(out.status.success());
//! ```

pub mod cluster;
pub mod faithfulness;
pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub use moe_devdata::fixtures::{self, fixtures_dir};

/// The `moe-node` binary of the profile these tests were built with, built on first use.
///
/// Panics (failing the test) when the build fails, with cargo's output.
pub fn moe_node_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MOE_NODE_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable under target/<profile>/deps");
        build_moe_node(profile_dir);
        profile_dir.join(format!("moe-node{}", std::env::consts::EXE_SUFFIX))
    })
}

/// `cargo build -p moe-node` for the profile whose output directory is `profile_dir`.
fn build_moe_node(profile_dir: &Path) {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    // `cargo test` builds tests of the `test` profile into `debug` (and `bench` into
    // `release`): those directories belong to `dev` and `release`.
    let profile_arg = match profile {
        "debug" => "dev",
        other => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "moe-node", "--profile", profile_arg])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("running cargo build");
    assert!(
        out.status.success(),
        "cargo build -p moe-node --profile {profile_arg} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `moe-node` with `args` and returns its output; also fails the test if it panicked.
pub fn moe_node<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let out = Command::new(moe_node_bin())
        .args(args)
        .output()
        .expect("starting moe-node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "moe-node {:?} panicked:\n{stderr}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
    );
    out
}

/// Runs `moe-node` with `args`, requires success, and returns its stdout.
pub fn moe_node_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = moe_node(args);
    assert!(
        out.status.success(),
        "moe-node {:?} failed ({}):\n{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("moe-node's stdout is UTF-8")
}
