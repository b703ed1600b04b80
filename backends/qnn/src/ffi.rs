//! The C ABI of the QNN library, written from the layout facts in the
//! project's `qnn-notes.md` (sizes and offsets measured on x86-64 against
//! core API 2.32; newer libraries only append to the function table). No
//! QNN header is used or copied.

use std::ffi::{c_char, c_void};

/// Every QNN call returns a 64-bit handle whose low 16 bits are the code.
pub type QnnErrorHandle = u64;

/// `Qnn_ApiVersion_t`: core API version, then backend API version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiVersion {
    pub core_major: u32,
    pub core_minor: u32,
    pub core_patch: u32,
    pub backend_major: u32,
    pub backend_minor: u32,
    pub backend_patch: u32,
}

/// Entries of the function table this crate knows, from the start of the
/// table (it never reorders, only grows).
pub const KNOWN_ENTRIES: usize = 71;

/// `QnnInterface_t`: one provider of a backend library.
#[repr(C)]
pub struct Interface {
    pub backend_id: u32,
    pub provider_name: *const c_char,
    pub api_version: ApiVersion,
    pub table: [*const c_void; KNOWN_ENTRIES],
}

// Layout facts (qnn-notes.md: 608 bytes, table at offset 40).
const _: () = assert!(std::mem::size_of::<ApiVersion>() == 24);
const _: () = assert!(std::mem::offset_of!(Interface, backend_id) == 0);
const _: () = assert!(std::mem::offset_of!(Interface, provider_name) == 8);
const _: () = assert!(std::mem::offset_of!(Interface, api_version) == 16);
const _: () = assert!(std::mem::offset_of!(Interface, table) == 40);
const _: () = assert!(std::mem::size_of::<Interface>() == 608);

/// `QnnInterface_getProviders(const QnnInterface_t*** providers, uint32_t* count)`.
pub type GetProviders = unsafe extern "C" fn(
    providers: *mut *const *const Interface,
    count: *mut u32,
) -> QnnErrorHandle;

/// Positions in the function table.
pub mod entry {
    pub const BACKEND_CREATE: usize = 1;
    pub const BACKEND_GET_API_VERSION: usize = 3;
    pub const BACKEND_GET_BUILD_ID: usize = 4;
    pub const BACKEND_FREE: usize = 8;
}

/// `backendCreate(log, const QnnBackend_Config_t** config, Qnn_BackendHandle_t* backend)`.
pub type BackendCreate = unsafe extern "C" fn(
    log: *mut c_void,
    config: *const *const c_void,
    backend: *mut *mut c_void,
) -> QnnErrorHandle;

/// `backendGetApiVersion(Qnn_ApiVersion_t* version)`.
pub type BackendGetApiVersion = unsafe extern "C" fn(version: *mut ApiVersion) -> QnnErrorHandle;

/// `backendGetBuildId(const char** id)`.
pub type BackendGetBuildId = unsafe extern "C" fn(id: *mut *const c_char) -> QnnErrorHandle;

/// `backendFree(Qnn_BackendHandle_t backend)`.
pub type BackendFree = unsafe extern "C" fn(backend: *mut c_void) -> QnnErrorHandle;
