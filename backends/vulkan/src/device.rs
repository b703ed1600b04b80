//! Instance, physical device, logical device, queue and allocator.
//!
//! A real GPU is preferred over a software one (lavapipe); `device` in
//! [`VulkanOptions`] picks one by index or by a part of its name. With
//! validation on, the Khronos validation layer is enabled and a debug
//! messenger records every error it reports: each submit and pipeline
//! creation then fails with [`Error::Validation`] if any was recorded, so a
//! test cannot pass over a validation error.

use crate::Error;
use ash::vk;
use gpu_allocator::vulkan::{Allocator, AllocatorCreateDesc};
use std::ffi::{c_void, CStr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

const VALIDATION_LAYER: &CStr = c"VK_LAYER_KHRONOS_validation";

/// How to open the Vulkan device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VulkanOptions {
    /// A device index (as `coordgen inspect --vulkan` lists them) or a part
    /// of its name; `None` takes the first real GPU, else a software one.
    pub device: Option<String>,
    /// Enable the Khronos validation layer and fail on any error it reports.
    pub validation: bool,
    /// Where the `VkPipelineCache` is persisted (`None`: in memory only).
    pub pipeline_cache: Option<PathBuf>,
    /// Largest storage-buffer range one binding may cover (`None`: the
    /// device's limit). Tests lower it to exercise the split path.
    pub max_binding_bytes: Option<u64>,
    /// Create the device without the features the shaders need: only for
    /// the test that proves the validation layer catches it.
    pub omit_features: bool,
    /// Run the shader builds without f64 even where the device has it
    /// (devices without shaderFloat64 always do): native FMAs and f32 sums,
    /// within a stated tolerance of the CPU instead of bitwise equal.
    pub f32_only: bool,
}

/// A physical device as listed for users.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub index: usize,
    pub name: String,
    pub kind: &'static str,
    pub api_version: String,
    /// Whether it has every feature the shaders need (8- and 16-bit
    /// storage buffers).
    pub suitable: bool,
    /// Whether it has f64, which the exact (bitwise) shader builds need.
    pub float64: bool,
}

/// Errors reported by the validation layer, gathered by the debug messenger.
#[derive(Debug, Default)]
pub(crate) struct ValidationLog {
    errors: Mutex<Vec<String>>,
}

impl ValidationLog {
    fn push(&self, message: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.push(message);
    }

    /// The errors recorded since the last call.
    pub(crate) fn take(&self) -> Vec<String> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *errors)
    }
}

/// # Safety
/// Called by the validation layer with a valid callback-data pointer (or
/// null) and the `user_data` given at messenger creation: a pointer to the
/// [`ValidationLog`] the context keeps alive for the messenger's lifetime.
unsafe extern "system" fn debug_callback(
    severity: vk::DebugUtilsMessageSeverityFlagsEXT,
    _types: vk::DebugUtilsMessageTypeFlagsEXT,
    data: *const vk::DebugUtilsMessengerCallbackDataEXT<'_>,
    user_data: *mut c_void,
) -> vk::Bool32 {
    if severity.contains(vk::DebugUtilsMessageSeverityFlagsEXT::ERROR) && !user_data.is_null() {
        let message = if data.is_null() {
            "validation error (no message)".to_string()
        } else {
            // SAFETY: the layer passes a valid callback-data struct whose
            // message, when not null, is a NUL-terminated string.
            unsafe {
                let data = &*data;
                if data.p_message.is_null() {
                    "validation error (no message)".to_string()
                } else {
                    CStr::from_ptr(data.p_message)
                        .to_string_lossy()
                        .into_owned()
                }
            }
        };
        // SAFETY: `user_data` is the ValidationLog the context owns (see
        // the function's safety section); it outlives the messenger.
        let log = unsafe { &*(user_data as *const ValidationLog) };
        log.push(message);
    }
    vk::FALSE
}

/// An open device with its queue and allocator. Dropping it waits for the
/// device to go idle and destroys everything in reverse order.
pub struct Context {
    // The allocator must be dropped before the device: it is in a Mutex of
    // an Option so `Drop` can take it out first.
    pub(crate) allocator: Mutex<Option<Allocator>>,
    pub(crate) device: ash::Device,
    pub(crate) queue: Mutex<vk::Queue>,
    pub(crate) queue_family: u32,
    pub(crate) physical: vk::PhysicalDevice,
    pub(crate) limits: vk::PhysicalDeviceLimits,
    pub(crate) info: DeviceInfo,
    pub(crate) max_binding_bytes: u64,
    /// Whether the exact (f64) shader builds run.
    pub(crate) exact: bool,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    pub(crate) validation: Arc<ValidationLog>,
    lost: std::sync::atomic::AtomicBool,
    /// Bytes copied between session memory and mirrors (not zero-copy).
    pub(crate) copied: std::sync::atomic::AtomicU64,
    pub(crate) instance: ash::Instance,
    _entry: ash::Entry,
}

fn vk_err(call: &'static str) -> impl Fn(vk::Result) -> Error {
    move |result| Error::Vulkan { call, result }
}

/// Whether the device has the storage features every shader needs, and
/// whether it has f64.
fn features_ok(instance: &ash::Instance, physical: vk::PhysicalDevice) -> (bool, bool) {
    let mut v11 = vk::PhysicalDeviceVulkan11Features::default();
    let mut v12 = vk::PhysicalDeviceVulkan12Features::default();
    let mut all = vk::PhysicalDeviceFeatures2::default()
        .push_next(&mut v11)
        .push_next(&mut v12);
    // SAFETY: `physical` came from this instance; the chain is well formed.
    unsafe { instance.get_physical_device_features2(physical, &mut all) };
    let core = all.features;
    (
        v11.storage_buffer16_bit_access == vk::TRUE && v12.storage_buffer8_bit_access == vk::TRUE,
        core.shader_float64 == vk::TRUE,
    )
}

fn kind_name(kind: vk::PhysicalDeviceType) -> &'static str {
    match kind {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete GPU",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated GPU",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual GPU",
        vk::PhysicalDeviceType::CPU => "CPU (software)",
        _ => "other",
    }
}

/// Preference order: real GPUs before virtual ones before software.
fn kind_rank(kind: vk::PhysicalDeviceType) -> u32 {
    match kind {
        vk::PhysicalDeviceType::DISCRETE_GPU => 0,
        vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
        vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
        vk::PhysicalDeviceType::CPU => 3,
        _ => 4,
    }
}

fn load_entry() -> Result<ash::Entry, Error> {
    // SAFETY: loading the Vulkan loader runs its initializers; it is the
    // documented way to use ash's `loaded` feature.
    unsafe { ash::Entry::load() }.map_err(|e| Error::NoLoader(e.to_string()))
}

fn create_instance(entry: &ash::Entry, validation: bool) -> Result<ash::Instance, Error> {
    let app = vk::ApplicationInfo::default()
        .application_name(c"coordgen")
        .engine_name(c"coordgen")
        .api_version(vk::API_VERSION_1_2);
    let mut layers = Vec::new();
    let mut extensions = Vec::new();
    if validation {
        // SAFETY: a plain query of the loader.
        let available = unsafe { entry.enumerate_instance_layer_properties() }
            .map_err(vk_err("vkEnumerateInstanceLayerProperties"))?;
        let found = available
            .iter()
            .any(|l| l.layer_name_as_c_str().is_ok_and(|n| n == VALIDATION_LAYER));
        if !found {
            return Err(Error::NoValidationLayer);
        }
        layers.push(VALIDATION_LAYER.as_ptr());
        extensions.push(ash::ext::debug_utils::NAME.as_ptr());
    }
    let info = vk::InstanceCreateInfo::default()
        .application_info(&app)
        .enabled_layer_names(&layers)
        .enabled_extension_names(&extensions);
    // SAFETY: the create info and the strings it points to live across the call.
    unsafe { entry.create_instance(&info, None) }.map_err(|result| {
        if result == vk::Result::ERROR_INCOMPATIBLE_DRIVER {
            Error::NoDevice("no Vulkan driver is installed (no ICD found)".into())
        } else {
            Error::Vulkan {
                call: "vkCreateInstance",
                result,
            }
        }
    })
}

/// Every physical device, in the loader's order.
pub fn list_devices() -> Result<Vec<DeviceInfo>, Error> {
    let entry = load_entry()?;
    let instance = create_instance(&entry, false)?;
    let list = describe_devices(&instance);
    // SAFETY: nothing created from this instance is alive any more.
    unsafe { instance.destroy_instance(None) };
    list
}

fn describe_devices(instance: &ash::Instance) -> Result<Vec<DeviceInfo>, Error> {
    // SAFETY: a plain query of a live instance.
    let physicals = unsafe { instance.enumerate_physical_devices() }
        .map_err(vk_err("vkEnumeratePhysicalDevices"))?;
    Ok(physicals
        .iter()
        .enumerate()
        .map(|(index, &p)| {
            // SAFETY: `p` came from this instance.
            let props = unsafe { instance.get_physical_device_properties(p) };
            let v = props.api_version;
            let (suitable, float64) = features_ok(instance, p);
            DeviceInfo {
                index,
                name: props
                    .device_name_as_c_str()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                kind: kind_name(props.device_type),
                api_version: format!(
                    "{}.{}.{}",
                    vk::api_version_major(v),
                    vk::api_version_minor(v),
                    vk::api_version_patch(v)
                ),
                suitable,
                float64,
            }
        })
        .collect())
}

impl Context {
    /// Opens the device `options` asks for.
    pub fn new(options: &VulkanOptions) -> Result<Arc<Self>, Error> {
        let entry = load_entry()?;
        let instance = create_instance(&entry, options.validation)?;
        // From here on, `Partial` destroys what exists if a step fails.
        let mut partial = Partial {
            instance: Some(instance),
            debug: None,
            device: None,
        };
        let validation = Arc::new(ValidationLog::default());
        if options.validation {
            let instance = partial.instance()?;
            let loader = ash::ext::debug_utils::Instance::new(&entry, instance);
            let info = vk::DebugUtilsMessengerCreateInfoEXT::default()
                .message_severity(
                    vk::DebugUtilsMessageSeverityFlagsEXT::ERROR
                        | vk::DebugUtilsMessageSeverityFlagsEXT::WARNING,
                )
                .message_type(
                    vk::DebugUtilsMessageTypeFlagsEXT::VALIDATION
                        | vk::DebugUtilsMessageTypeFlagsEXT::GENERAL
                        | vk::DebugUtilsMessageTypeFlagsEXT::PERFORMANCE,
                )
                .pfn_user_callback(Some(debug_callback))
                .user_data(Arc::as_ptr(&validation) as *mut c_void);
            // SAFETY: the callback's user data is the ValidationLog, kept
            // alive by `validation` in the context until after the
            // messenger is destroyed.
            let messenger = unsafe { loader.create_debug_utils_messenger(&info, None) }
                .map_err(vk_err("vkCreateDebugUtilsMessengerEXT"))?;
            partial.debug = Some((loader, messenger));
        }
        let instance = partial.instance()?.clone();
        let devices = describe_devices(&instance)?;
        // SAFETY: a plain query of a live instance.
        let physicals = unsafe { instance.enumerate_physical_devices() }
            .map_err(vk_err("vkEnumeratePhysicalDevices"))?;
        let chosen = choose(&instance, &physicals, &devices, options.device.as_deref())?;
        let physical = physicals[chosen];
        let info = devices[chosen].clone();
        // SAFETY: `physical` came from this instance.
        let props = unsafe { instance.get_physical_device_properties(physical) };
        // SAFETY: as above.
        let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
        let queue_family = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| Error::NoDevice(format!("{} has no compute queue", info.name)))?
            as u32;
        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        let mut v11 = vk::PhysicalDeviceVulkan11Features::default();
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default();
        let mut core = vk::PhysicalDeviceFeatures::default();
        let exact = info.float64 && !options.f32_only;
        if !options.omit_features {
            v11.storage_buffer16_bit_access = vk::TRUE;
            v12.storage_buffer8_bit_access = vk::TRUE;
            if exact {
                core.shader_float64 = vk::TRUE;
            }
        }
        let device_info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_info)
            .enabled_features(&core)
            .push_next(&mut v11)
            .push_next(&mut v12);
        // SAFETY: the create info, its chain and arrays live across the call;
        // the features enabled were reported as supported by `choose`.
        let device = unsafe { instance.create_device(physical, &device_info, None) }
            .map_err(vk_err("vkCreateDevice"))?;
        partial.device = Some(device.clone());
        // SAFETY: the family and index exist (one queue was requested).
        let queue = unsafe { device.get_device_queue(queue_family, 0) };
        let allocator = Allocator::new(&AllocatorCreateDesc {
            instance: instance.clone(),
            device: device.clone(),
            physical_device: physical,
            debug_settings: Default::default(),
            buffer_device_address: false,
            allocation_sizes: Default::default(),
        })
        .map_err(|e| Error::Memory(e.to_string()))?;
        let limit = u64::from(props.limits.max_storage_buffer_range);
        let max_binding_bytes = options.max_binding_bytes.map_or(limit, |m| m.min(limit));
        let debug = partial.debug.take();
        partial.forget();
        Ok(Arc::new(Context {
            allocator: Mutex::new(Some(allocator)),
            device,
            queue: Mutex::new(queue),
            queue_family,
            physical,
            limits: props.limits,
            info,
            max_binding_bytes,
            exact,
            debug,
            validation,
            lost: std::sync::atomic::AtomicBool::new(false),
            copied: std::sync::atomic::AtomicU64::new(0),
            instance,
            _entry: entry,
        }))
    }

    /// The device in use.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Fails with [`Error::Validation`] if the validation layer reported an
    /// error since the last check.
    pub fn check_validation(&self) -> Result<(), Error> {
        let errors = self.validation.take();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(errors))
        }
    }

    /// Treats the device as lost from now on.
    pub fn mark_lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the device was lost (a submission reported it, or
    /// [`Context::mark_lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the exact shader builds run (bitwise the CPU's results), or
    /// the builds without f64.
    pub fn exact(&self) -> bool {
        self.exact
    }

    /// Whether the validation layer is on.
    pub fn validating(&self) -> bool {
        self.debug.is_some()
    }
}

/// Picks a suitable device: the one asked for, or the best kind.
fn choose(
    _instance: &ash::Instance,
    physicals: &[vk::PhysicalDevice],
    devices: &[DeviceInfo],
    wanted: Option<&str>,
) -> Result<usize, Error> {
    if physicals.is_empty() {
        return Err(Error::NoDevice("the Vulkan loader lists no device".into()));
    }
    let listing = || {
        devices
            .iter()
            .map(|d| format!("{}: {} ({})", d.index, d.name, d.kind))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pick = match wanted {
        Some(w) => {
            let by_index = w.parse::<usize>().ok().filter(|&i| i < devices.len());
            let lower = w.to_lowercase();
            by_index
                .or_else(|| {
                    devices
                        .iter()
                        .position(|d| d.name.to_lowercase().contains(&lower))
                })
                .ok_or_else(|| {
                    Error::NoDevice(format!(
                        "no Vulkan device matches {w:?} (have {})",
                        listing()
                    ))
                })?
        }
        None => {
            let rank = |d: &DeviceInfo| match d.kind {
                "discrete GPU" => kind_rank(vk::PhysicalDeviceType::DISCRETE_GPU),
                "integrated GPU" => kind_rank(vk::PhysicalDeviceType::INTEGRATED_GPU),
                "virtual GPU" => kind_rank(vk::PhysicalDeviceType::VIRTUAL_GPU),
                "CPU (software)" => kind_rank(vk::PhysicalDeviceType::CPU),
                _ => 4,
            };
            devices
                .iter()
                .filter(|d| d.suitable)
                .min_by_key(|d| rank(d))
                .map(|d| d.index)
                .ok_or_else(|| {
                    Error::NoDevice(format!(
                        "no Vulkan device has 8- and 16-bit storage buffers (have {})",
                        listing()
                    ))
                })?
        }
    };
    if !devices[pick].suitable {
        return Err(Error::NoDevice(format!(
            "{} lacks 8- or 16-bit storage buffers, which the shaders need",
            devices[pick].name
        )));
    }
    Ok(pick)
}

/// What exists while [`Context::new`] runs, destroyed if it fails.
struct Partial {
    instance: Option<ash::Instance>,
    debug: Option<(ash::ext::debug_utils::Instance, vk::DebugUtilsMessengerEXT)>,
    device: Option<ash::Device>,
}

impl Partial {
    fn instance(&self) -> Result<&ash::Instance, Error> {
        self.instance
            .as_ref()
            .ok_or_else(|| Error::NoDevice("instance already handed over".into()))
    }

    /// Hands everything over to the context.
    fn forget(mut self) {
        self.instance = None;
        self.debug = None;
        self.device = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // SAFETY: these objects were created above and nothing else uses
        // them: construction failed before the context took them.
        unsafe {
            if let Some(device) = self.device.take() {
                device.destroy_device(None);
            }
            if let Some((loader, messenger)) = self.debug.take() {
                loader.destroy_debug_utils_messenger(messenger, None);
            }
            if let Some(instance) = self.instance.take() {
                instance.destroy_instance(None);
            }
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context owns these objects; every buffer, pipeline
        // and command pool holds an Arc of the context, so none is alive.
        unsafe {
            let _ = self.device.device_wait_idle();
            if let Ok(mut slot) = self.allocator.lock() {
                slot.take();
            }
            self.device.destroy_device(None);
            if let Some((loader, messenger)) = self.debug.take() {
                loader.destroy_debug_utils_messenger(messenger, None);
            }
            self.instance.destroy_instance(None);
        }
    }
}
