//! What the QNN tests share: where the fetched library is.
#![allow(dead_code)]

use coordgen_qnn::HTP_LIBRARY;
use std::path::PathBuf;

/// The fetched QNN folder: `$COORDGEN_QNN_DIR`, else `.cache/qnn/onnxruntime_qnn`
/// in the workspace. `None` (the test skips) when absent, unless
/// `COORDGEN_REQUIRE_QNN=1` (set by `tools/test`), which fails instead.
pub fn qnn_folder() -> Option<PathBuf> {
    let folder = std::env::var_os("COORDGEN_QNN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/qnn/onnxruntime_qnn")
        });
    if folder.join(HTP_LIBRARY).is_file() {
        return Some(folder);
    }
    assert!(
        std::env::var("COORDGEN_REQUIRE_QNN").as_deref() != Ok("1"),
        "the QNN library is missing from {} (run tools/fetch-qnn)",
        folder.display()
    );
    eprintln!(
        "skipped: no QNN library in {} (run tools/fetch-qnn)",
        folder.display()
    );
    None
}
