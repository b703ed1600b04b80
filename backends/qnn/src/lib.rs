//! # coordgen-qnn
//!
//! The QNN HTP backend: Qualcomm's own `libQnnHtp.so`, loaded at run time.
//! On a phone it drives the Hexagon NPU; on x86-64 the same library from the
//! PyPI wheel `onnxruntime-qnn` runs HTP graphs in Qualcomm's functional
//! simulator (`tools/fetch-qnn` downloads it; doing so accepts Qualcomm's
//! licence in that wheel). The FFI definitions are hand-written from layout
//! facts ([`ffi`]); safe wrappers free their handles on drop.
//!
//! This first part loads the library, picks a provider with core API 2.x,
//! and creates and frees a backend.

#![warn(unsafe_op_in_unsafe_fn)]

mod backend;
mod exec;
pub mod ffi;
mod graph;
mod group;
mod lower;
mod runtime;
pub mod weights;

pub use backend::{cache_key_parts, CompileTimes, QnnBackend};
pub use exec::QnnExecutable;
pub use group::GraphGroup;
pub use lower::GraphScope;
pub use weights::{ConversionReport, WeightFormat};

pub use graph::{DataType, Graph, GraphBuilder, IoTensor, Param, Role, Scalar, TensorRef};

pub use runtime::{Context, Device, Log, Runtime, Soc};

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The library file in a QNN folder.
pub const HTP_LIBRARY: &str = "libQnnHtp.so";
/// The core API major version this crate speaks.
pub const CORE_MAJOR: u32 = 2;
/// The oldest core API minor version whose layouts this crate mirrors.
pub const MIN_CORE_MINOR: u32 = 32;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the QNN library {path} does not exist (run tools/fetch-qnn, or point the backend at a folder holding {HTP_LIBRARY})")]
    LibraryMissing { path: PathBuf },
    #[error("the QNN library {path} could not be loaded: {reason} (run tools/fetch-qnn to unpack it again, or point the backend at another folder)")]
    LibraryBroken { path: PathBuf, reason: String },
    #[error("the QNN library {path} lacks the symbol {symbol}: {reason}")]
    SymbolMissing {
        path: PathBuf,
        symbol: &'static str,
        reason: String,
    },
    #[error("no QNN provider speaks core API {CORE_MAJOR}.{MIN_CORE_MINOR} or a later 2.x; found: {found}")]
    NoProvider { found: String },
    #[error("QNN call {call} failed with code {code}: {message}")]
    Call {
        call: &'static str,
        code: u16,
        /// The library's text for the code and the errors it logged.
        message: String,
    },
    #[error("QNN graph {graph}, tensor {tensor}: {message}")]
    BadTensor {
        graph: String,
        tensor: String,
        message: String,
    },
    #[error("lowering {graph} to QNN: {message}")]
    Lowering { graph: String, message: String },
    #[error("QNN graph group {group} {message}")]
    Group { group: String, message: String },
    #[error("QNN context cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("weight {name}: {message}")]
    BadWeight { name: String, message: String },
    #[error("the name {name:?} contains a NUL byte")]
    BadName { name: String },
    #[error("the QNN function table of provider {provider} has no entry {entry}")]
    NoEntry { provider: String, entry: usize },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The low 16 bits of a QNN return value: 0 is success.
fn code(handle: ffi::QnnErrorHandle) -> u16 {
    (handle & 0xffff) as u16
}

fn check(call: &'static str, handle: ffi::QnnErrorHandle) -> Result<()> {
    match code(handle) {
        0 => Ok(()),
        code => Err(Error::Call {
            call,
            code,
            message: String::new(),
        }),
    }
}

/// Runs `f` with file descriptor 1 pointed at stderr, for library code that
/// prints to stdout. Other threads' stdout goes to stderr meanwhile, so this
/// only wraps loading and backend creation.
fn stdout_to_stderr<T>(f: impl FnOnce() -> T) -> T {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: plain descriptor calls; a failed dup leaves stdout alone.
    let saved = unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::dup(1)
    };
    // SAFETY: as above.
    let redirected = saved >= 0 && unsafe { libc::dup2(2, 1) } >= 0;
    let result = f();
    if saved >= 0 {
        // SAFETY: flush what the library buffered into stderr, then restore
        // the saved descriptor and close the copy.
        unsafe {
            libc::fflush(std::ptr::null_mut());
            if redirected {
                libc::dup2(saved, 1);
            }
            libc::close(saved);
        }
    }
    result
}

/// A provider as the library describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderInfo {
    pub name: String,
    pub backend_id: u32,
    pub api_version: ffi::ApiVersion,
}

/// A loaded QNN backend library and its chosen provider.
pub struct Library {
    path: PathBuf,
    provider: ProviderInfo,
    /// The provider's function table (it lives as long as the library).
    table: *const ffi::Interface,
    // Dropped last: the table points into it.
    _library: libloading::Library,
}

// SAFETY: the function table is immutable static data of the loaded library,
// and the QNN API is documented as callable from any thread.
unsafe impl Send for Library {}
// SAFETY: as above; nothing in `Library` is mutated after loading.
unsafe impl Sync for Library {}

impl Library {
    /// Loads `libQnnHtp.so` from `folder` and picks its provider with core
    /// API 2.x, at least 2.[`MIN_CORE_MINOR`].
    pub fn load(folder: impl AsRef<Path>) -> Result<Arc<Library>> {
        let path = folder.as_ref().join(HTP_LIBRARY);
        if !path.is_file() {
            return Err(Error::LibraryMissing { path });
        }
        // SAFETY: loading runs the library's initializers; this is the QNN
        // library the caller chose, which is the whole point of this crate.
        let library =
            stdout_to_stderr(|| unsafe { libloading::Library::new(&path) }).map_err(|e| {
                Error::LibraryBroken {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
        // SAFETY: the symbol has this C signature (qnn-notes.md, Loading).
        let get_providers: libloading::Symbol<ffi::GetProviders> = unsafe {
            library.get(b"QnnInterface_getProviders\0")
        }
        .map_err(|e| Error::SymbolMissing {
            path: path.clone(),
            symbol: "QnnInterface_getProviders",
            reason: e.to_string(),
        })?;
        let mut providers: *const *const ffi::Interface = std::ptr::null();
        let mut count = 0u32;
        // SAFETY: both out-pointers are valid for writes.
        check("QnnInterface_getProviders", unsafe {
            get_providers(&mut providers, &mut count)
        })?;
        let mut found = Vec::new();
        let mut chosen = None;
        for i in 0..count as usize {
            // SAFETY: the library returned `count` provider pointers.
            let interface = unsafe { *providers.add(i) };
            if interface.is_null() {
                continue;
            }
            // SAFETY: a non-null provider record, laid out as `ffi::Interface`
            // for its first fields (asserted sizes and offsets).
            let (info, usable) = unsafe { describe(interface) };
            found.push(format!(
                "{} (core {}.{}.{})",
                info.name,
                info.api_version.core_major,
                info.api_version.core_minor,
                info.api_version.core_patch
            ));
            if usable && chosen.is_none() {
                chosen = Some((interface, info));
            }
        }
        let Some((table, provider)) = chosen else {
            return Err(Error::NoProvider {
                found: if found.is_empty() {
                    "none".to_string()
                } else {
                    found.join(", ")
                },
            });
        };
        Ok(Arc::new(Library {
            path,
            provider,
            table,
            _library: library,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn provider(&self) -> &ProviderInfo {
        &self.provider
    }

    /// Entry `index` of the function table, typed as `F`.
    ///
    /// # Safety
    /// `F` must be the C function pointer type of that entry.
    pub(crate) unsafe fn entry<F: Copy>(&self, index: usize) -> Result<F> {
        // SAFETY: `table` points to a provider record with at least
        // `KNOWN_ENTRIES` entries (the chosen provider speaks 2.32 or later).
        let pointer = unsafe { (*self.table).table[index] };
        if pointer.is_null() {
            return Err(Error::NoEntry {
                provider: self.provider.name.clone(),
                entry: index,
            });
        }
        debug_assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*const ()>());
        // SAFETY: a non-null function pointer of the type the caller names.
        Ok(unsafe { std::mem::transmute_copy(&pointer) })
    }

    /// Like [`check`], with the library's message for the code and the
    /// errors it logged during the call.
    pub(crate) fn check(&self, call: &'static str, handle: ffi::QnnErrorHandle) -> Result<()> {
        let Err(Error::Call { code, .. }) = check(call, handle) else {
            runtime::clear_log();
            return Ok(());
        };
        let mut message = self.error_message(handle).unwrap_or_default();
        let logged = runtime::take_logged_errors();
        if !logged.is_empty() {
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&logged);
        }
        Err(Error::Call {
            call,
            code,
            message,
        })
    }

    /// The library's text for an error (`errorGetMessage`).
    fn error_message(&self, handle: ffi::QnnErrorHandle) -> Option<String> {
        // SAFETY: entry ERROR_GET_MESSAGE has this signature.
        let get: ffi::ErrorGetMessage = unsafe { self.entry(ffi::entry::ERROR_GET_MESSAGE).ok()? };
        let mut text: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: a valid out-pointer; the library returns a static string.
        let status = unsafe { get(handle, &mut text) };
        if code(status) != 0 || text.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, owned by the library.
        Some(
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// The backend's build id, e.g. `v2.51.0.260929181845`.
    pub fn build_id(&self) -> Result<String> {
        // SAFETY: entry BACKEND_GET_BUILD_ID has this signature.
        let get: ffi::BackendGetBuildId = unsafe { self.entry(ffi::entry::BACKEND_GET_BUILD_ID)? };
        let mut id: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: the out-pointer is valid for a write.
        check("backendGetBuildId", unsafe { get(&mut id) })?;
        if id.is_null() {
            return Ok(String::new());
        }
        // SAFETY: the library returns a NUL-terminated static string.
        Ok(unsafe { CStr::from_ptr(id) }.to_string_lossy().into_owned())
    }

    /// The backend API version the library reports.
    pub fn api_version(&self) -> Result<ffi::ApiVersion> {
        // SAFETY: entry BACKEND_GET_API_VERSION has this signature.
        let get: ffi::BackendGetApiVersion =
            unsafe { self.entry(ffi::entry::BACKEND_GET_API_VERSION)? };
        let mut version = ffi::ApiVersion::default();
        // SAFETY: the out-pointer is valid for a write.
        check("backendGetApiVersion", unsafe { get(&mut version) })?;
        Ok(version)
    }
}

/// The provider record's description, and whether this crate can use it.
///
/// # Safety
/// `interface` must point to a live provider record.
unsafe fn describe(interface: *const ffi::Interface) -> (ProviderInfo, bool) {
    // SAFETY: the caller's promise; the first fields precede the table.
    let record = unsafe { &*interface };
    let name = if record.provider_name.is_null() {
        String::from("(unnamed)")
    } else {
        // SAFETY: a NUL-terminated string owned by the library.
        unsafe { CStr::from_ptr(record.provider_name) }
            .to_string_lossy()
            .into_owned()
    };
    let version = record.api_version;
    let usable = version.core_major == CORE_MAJOR && version.core_minor >= MIN_CORE_MINOR;
    (
        ProviderInfo {
            name,
            backend_id: record.backend_id,
            api_version: version,
        },
        usable,
    )
}

/// A QNN backend instance; freed on drop.
pub struct Backend {
    handle: *mut std::ffi::c_void,
    library: Arc<Library>,
}

// SAFETY: a backend handle may be used and freed from any thread.
unsafe impl Send for Backend {}

impl Backend {
    /// Creates a backend with the library's defaults (no log, no configs).
    pub fn new(library: &Arc<Library>) -> Result<Backend> {
        Self::with_log(library, None)
    }

    /// Creates a backend that logs to `log`.
    pub fn with_log(library: &Arc<Library>, log: Option<&Log>) -> Result<Backend> {
        // SAFETY: entry BACKEND_CREATE has this signature.
        let create: ffi::BackendCreate = unsafe { library.entry(ffi::entry::BACKEND_CREATE)? };
        let mut handle = std::ptr::null_mut();
        let log = log.map_or(std::ptr::null_mut(), |l| l.handle());
        // The library announces itself on stdout when its first backend
        // starts; that line must not corrupt a caller's stdout (`--json`).
        let status = stdout_to_stderr(|| {
            // SAFETY: a live or null log, no configs, and an out-pointer
            // valid for a write.
            unsafe { create(log, std::ptr::null(), &mut handle) }
        });
        library.check("backendCreate", status)?;
        Ok(Backend {
            handle,
            library: library.clone(),
        })
    }

    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: entry BACKEND_FREE has this signature.
        if let Ok(free) = unsafe {
            self.library
                .entry::<ffi::BackendFree>(ffi::entry::BACKEND_FREE)
        } {
            // SAFETY: the handle came from backendCreate and is freed once.
            let _ = unsafe { free(self.handle) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_are_the_low_16_bits() {
        assert_eq!(code(0), 0);
        assert_eq!(code(0x0001_0000_0000_36B1), 14001);
        assert!(matches!(
            check("deviceCreate", 14001),
            Err(Error::Call { code: 14001, .. })
        ));
    }
}
