//! The library's log, backend, device and contexts, each freed on drop.

use crate::ffi::{self, entry, Handle};
use crate::{Error, Library, Result};
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Arc, Mutex};

/// Lines of the library's log kept for error reports.
const LOG_LINES: usize = 64;

/// Warnings and errors the library logged, newest last. The log callback
/// carries no user pointer, so the buffer is process-wide (as the library's
/// own state is).
static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Takes the error lines logged since the last call, joined by "; ".
pub(crate) fn take_logged_errors() -> String {
    let Ok(mut lines) = LOG.lock() else {
        return String::new();
    };
    let mut errors: Vec<String> = Vec::new();
    for line in lines.drain(..) {
        if let Some(text) = line.strip_prefix("<E>") {
            // The library repeats a failure at each layer it passes through.
            let text = text.trim().trim_start_matches("<E>").trim().to_string();
            if !text.is_empty() && !errors.contains(&text) {
                errors.push(text);
            }
        }
    }
    errors.join("; ")
}

/// Drops whatever was logged so far (before a call whose errors matter).
pub(crate) fn clear_log() {
    if let Ok(mut lines) = LOG.lock() {
        lines.clear();
    }
}

extern "C" {
    // The C library's formatter; the `va_list` travels as the pointer the
    // callback received (see `ffi::LogCallback`).
    fn vsnprintf(buf: *mut c_char, size: usize, format: *const c_char, args: *mut c_void) -> i32;
}

/// Keeps the library's warnings and errors (not its chatter).
unsafe extern "C" fn log_callback(format: *const c_char, level: u32, _ts: u64, args: *mut c_void) {
    if format.is_null() || level > ffi::log_level::WARN {
        return;
    }
    let mut buf = [0u8; 512];
    // SAFETY: `format` and `args` are the library's printf-style pair for
    // this call; vsnprintf writes at most `buf.len()` bytes, NUL included.
    let written = unsafe { vsnprintf(buf.as_mut_ptr().cast(), buf.len(), format, args) };
    let text = if written < 0 {
        // SAFETY: a non-null NUL-terminated format string.
        unsafe { CStr::from_ptr(format) }
            .to_string_lossy()
            .into_owned()
    } else {
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let tag = if level == ffi::log_level::ERROR {
        "<E>"
    } else {
        "<W>"
    };
    if let Ok(mut lines) = LOG.lock() {
        if lines.len() >= LOG_LINES {
            lines.remove(0);
        }
        lines.push(format!("{tag} {}", text.trim()));
    }
}

/// A log handle routed to the process-wide buffer above; freed on drop.
pub struct Log {
    handle: Handle,
    library: Arc<Library>,
}

impl Log {
    pub fn new(library: &Arc<Library>) -> Result<Log> {
        // SAFETY: entry LOG_CREATE has this signature.
        let create: ffi::LogCreate = unsafe { library.entry(entry::LOG_CREATE)? };
        let mut handle = std::ptr::null_mut();
        // SAFETY: the callback is a static function; the out-pointer is
        // valid for a write.
        library.check("logCreate", unsafe {
            create(Some(log_callback), ffi::log_level::WARN, &mut handle)
        })?;
        Ok(Log {
            handle,
            library: library.clone(),
        })
    }
}

impl Log {
    pub(crate) fn handle(&self) -> Handle {
        self.handle
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // SAFETY: entry LOG_FREE has this signature.
        if let Ok(free) = unsafe { self.library.entry::<ffi::LogFree>(entry::LOG_FREE) } {
            // SAFETY: the handle came from logCreate and is freed once.
            let _ = unsafe { free(self.handle) };
        }
    }
}

/// Snapdragon SoC models the HTP device can be set to (the simulator
/// follows the chosen SoC's arithmetic: v73 and later run float ops in fp16).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Soc {
    /// SM8550 (Snapdragon 8 Gen 2), HTP v73.
    Sm8550,
    /// SM8650 (Snapdragon 8 Gen 3), HTP v75: the default.
    #[default]
    Sm8650,
    /// SM8750 (Snapdragon 8 Elite), HTP v79.
    Sm8750,
    /// SC8380XP (Snapdragon X Elite), HTP v73.
    Sc8380xp,
}

impl Soc {
    pub const ALL: [Soc; 4] = [Soc::Sm8550, Soc::Sm8650, Soc::Sm8750, Soc::Sc8380xp];

    /// The library's `socModel` number.
    pub fn model(self) -> u32 {
        match self {
            Soc::Sm8550 => 43,
            Soc::Sm8650 => 57,
            Soc::Sm8750 => 69,
            Soc::Sc8380xp => 60,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Soc::Sm8550 => "sm8550",
            Soc::Sm8650 => "sm8650",
            Soc::Sm8750 => "sm8750",
            Soc::Sc8380xp => "sc8380xp",
        }
    }

    pub fn arch(self) -> &'static str {
        match self {
            Soc::Sm8550 | Soc::Sc8380xp => "v73",
            Soc::Sm8650 => "v75",
            Soc::Sm8750 => "v79",
        }
    }

    /// Parses a name such as `sm8650` (case-insensitive).
    pub fn parse(name: &str) -> Option<Soc> {
        Soc::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for Soc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTP {})", self.name(), self.arch())
    }
}

/// A QNN device set to one SoC; freed on drop.
pub struct Device {
    handle: Handle,
    library: Arc<Library>,
}

impl Device {
    pub fn new(library: &Arc<Library>, log: &Log, soc: Soc) -> Result<Device> {
        // SAFETY: entry DEVICE_CREATE has this signature.
        let create: ffi::DeviceCreate = unsafe { library.entry(entry::DEVICE_CREATE)? };
        let custom = ffi::HtpDeviceCustomConfig {
            option: ffi::HTP_DEVICE_OPTION_SOC,
            value: u64::from(soc.model()),
        };
        let config = ffi::Config {
            option: ffi::CONFIG_OPTION_CUSTOM,
            custom: (&custom as *const ffi::HtpDeviceCustomConfig).cast(),
        };
        let configs = [&config as *const ffi::Config, std::ptr::null()];
        let mut handle = std::ptr::null_mut();
        // SAFETY: a null-terminated config list whose pointees outlive the
        // call; the out-pointer is valid for a write.
        library.check("deviceCreate", unsafe {
            create(log.handle, configs.as_ptr(), &mut handle)
        })?;
        Ok(Device {
            handle,
            library: library.clone(),
        })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: entry DEVICE_FREE has this signature.
        if let Ok(free) = unsafe { self.library.entry::<ffi::DeviceFree>(entry::DEVICE_FREE) } {
            // SAFETY: the handle came from deviceCreate and is freed once.
            let _ = unsafe { free(self.handle) };
        }
    }
}

/// What every context needs: the library, its log, a backend and a device.
/// Fields drop in order: device and backend before the log they use.
pub struct Runtime {
    pub(crate) device: Device,
    pub(crate) backend: crate::Backend,
    _log: Log,
    pub(crate) library: Arc<Library>,
    soc: Soc,
}

// SAFETY: QNN handles may be used from any thread; the runtime is only read
// after creation.
unsafe impl Sync for Runtime {}
// SAFETY: as above.
unsafe impl Send for Runtime {}

impl Runtime {
    /// Creates a log, a backend and a device set to `soc`.
    pub fn new(library: &Arc<Library>, soc: Soc) -> Result<Arc<Runtime>> {
        let log = Log::new(library)?;
        let backend = crate::Backend::with_log(library, Some(&log))?;
        let device = Device::new(library, &log, soc)?;
        Ok(Arc::new(Runtime {
            device,
            backend,
            _log: log,
            library: library.clone(),
            soc,
        }))
    }

    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }

    pub fn soc(&self) -> Soc {
        self.soc
    }

    pub(crate) fn backend_handle(&self) -> Handle {
        self.backend.handle
    }
}

/// A QNN context: it owns its graphs and their tensors (QNN frees those
/// with the context); freed on drop.
pub struct Context {
    pub(crate) handle: Handle,
    pub(crate) runtime: Arc<Runtime>,
}

// SAFETY: see `Runtime`.
unsafe impl Send for Context {}
// SAFETY: see `Runtime`; graph executions on one context are serialized by
// their owners.
unsafe impl Sync for Context {}

impl Context {
    pub fn new(runtime: &Arc<Runtime>) -> Result<Arc<Context>> {
        let library = &runtime.library;
        // SAFETY: entry CONTEXT_CREATE has this signature.
        let create: ffi::ContextCreate = unsafe { library.entry(entry::CONTEXT_CREATE)? };
        let mut handle = std::ptr::null_mut();
        // SAFETY: live backend and device handles, no configs, and an
        // out-pointer valid for a write.
        library.check("contextCreate", unsafe {
            create(
                runtime.backend.handle,
                runtime.device.handle,
                std::ptr::null(),
                &mut handle,
            )
        })?;
        Ok(Arc::new(Context {
            handle,
            runtime: runtime.clone(),
        }))
    }

    /// Loads a context (and its finalized graphs) from a binary that
    /// [`Context::binary`] wrote.
    pub fn from_binary(runtime: &Arc<Runtime>, binary: &[u8]) -> Result<Arc<Context>> {
        let library = &runtime.library;
        // SAFETY: entry CONTEXT_CREATE_FROM_BINARY has this signature.
        let create: ffi::ContextCreateFromBinary =
            unsafe { library.entry(entry::CONTEXT_CREATE_FROM_BINARY)? };
        let mut handle = std::ptr::null_mut();
        // SAFETY: the buffer is valid for `len` bytes during the call (the
        // library copies what it keeps); live handles; a valid out-pointer.
        library.check("contextCreateFromBinary", unsafe {
            create(
                runtime.backend.handle,
                runtime.device.handle,
                std::ptr::null(),
                binary.as_ptr().cast(),
                binary.len() as u64,
                &mut handle,
                std::ptr::null_mut(),
            )
        })?;
        Ok(Arc::new(Context {
            handle,
            runtime: runtime.clone(),
        }))
    }

    /// The context with every finalized graph, serialized.
    pub fn binary(&self) -> Result<Vec<u8>> {
        let library = &self.runtime.library;
        // SAFETY: entries CONTEXT_GET_BINARY_SIZE / CONTEXT_GET_BINARY have
        // these signatures.
        let (size_of, get): (ffi::ContextGetBinarySize, ffi::ContextGetBinary) = unsafe {
            (
                library.entry(entry::CONTEXT_GET_BINARY_SIZE)?,
                library.entry(entry::CONTEXT_GET_BINARY)?,
            )
        };
        let mut size = 0u64;
        // SAFETY: a live context and a valid out-pointer.
        library.check("contextGetBinarySize", unsafe {
            size_of(self.handle, &mut size)
        })?;
        let len = usize::try_from(size).map_err(|_| Error::Call {
            call: "contextGetBinarySize",
            code: 0,
            message: format!("a binary of {size} bytes does not fit in memory"),
        })?;
        let mut buf = vec![0u8; len];
        let mut written = 0u64;
        // SAFETY: `buf` is valid for `size` bytes; valid out-pointer.
        library.check("contextGetBinary", unsafe {
            get(self.handle, buf.as_mut_ptr().cast(), size, &mut written)
        })?;
        buf.truncate(usize::try_from(written).unwrap_or(len).min(len));
        Ok(buf)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: entry CONTEXT_FREE has this signature.
        if let Ok(free) = unsafe {
            self.runtime
                .library
                .entry::<ffi::ContextFree>(entry::CONTEXT_FREE)
        } {
            // SAFETY: the handle came from contextCreate(FromBinary) and is
            // freed once; its graphs hold an Arc to this context, so none
            // is alive any more.
            let _ = unsafe { free(self.handle, std::ptr::null_mut()) };
        }
    }
}
