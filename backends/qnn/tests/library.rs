//! Loading Qualcomm's real QNN HTP library (`tools/fetch-qnn`), and typed
//! errors for a missing or broken one.

use coordgen_qnn::{Backend, Error, Library, HTP_LIBRARY};
use std::path::PathBuf;

mod common;
use common::qnn_folder;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("coordgen-qnn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_real_library_loads_and_makes_backends() {
    let Some(folder) = qnn_folder() else { return };
    let library = Library::load(&folder).unwrap();
    let provider = library.provider();
    assert_eq!(provider.name, "HTP_QTI_AISW");
    assert_eq!(provider.api_version.core_major, 2);
    assert!(provider.api_version.core_minor >= coordgen_qnn::MIN_CORE_MINOR);
    let build = library.build_id().unwrap();
    assert!(build.starts_with("v2."), "build id {build:?}");
    let api = library.api_version().unwrap();
    assert_eq!(api.core_major, 2);
    assert!(api.backend_major >= 5, "{api:?}");
    // Backends come and go (each freed on drop).
    for _ in 0..2 {
        let backend = Backend::new(&library).unwrap();
        assert_eq!(backend.library().path(), library.path());
    }
}

#[test]
fn a_missing_or_broken_library_is_a_typed_error() {
    let empty = scratch("empty");
    assert!(matches!(
        Library::load(&empty),
        Err(Error::LibraryMissing { .. })
    ));
    // Not a shared object at all.
    let junk = scratch("junk");
    std::fs::write(junk.join(HTP_LIBRARY), b"not an ELF file").unwrap();
    let err = Library::load(&junk).err().expect("junk must not load");
    assert!(matches!(err, Error::LibraryBroken { .. }), "{err}");
    assert!(err.to_string().contains(HTP_LIBRARY));
    // A real shared object without the QNN entry point.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if let Some(libm) = libm {
        let other = scratch("other");
        std::fs::copy(&libm, other.join(HTP_LIBRARY)).unwrap();
        let err = Library::load(&other).err().expect("libm is not QNN");
        assert!(
            matches!(
                err,
                Error::SymbolMissing {
                    symbol: "QnnInterface_getProviders",
                    ..
                }
            ),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(other);
    }
    let _ = std::fs::remove_dir_all(empty);
    let _ = std::fs::remove_dir_all(junk);
}
