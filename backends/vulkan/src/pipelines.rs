//! The compute shaders (committed SPIR-V, embedded) and their pipelines,
//! created on first use and kept in a `VkPipelineCache` that can be
//! persisted on disk.

use crate::device::Context;
use crate::Error;
use ash::vk;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// One compute shader of `backends/vulkan/shaders/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    QuantizeQ8,
    QuantizeQ8K,
    MatmulQ,
    MatmulK,
    MatmulF16,
    MatmulF32,
    RmsNorm,
    Rope,
    Eltwise,
    Embedding,
    KvStore,
    AttnScores,
    AttnSoftmax,
    AttnValues,
}

impl Shader {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Shader::QuantizeQ8 => "quantize_q8",
            Shader::QuantizeQ8K => "quantize_q8k",
            Shader::MatmulQ => "matmul_q",
            Shader::MatmulK => "matmul_k",
            Shader::MatmulF16 => "matmul_f16",
            Shader::MatmulF32 => "matmul_f32",
            Shader::RmsNorm => "rms_norm",
            Shader::Rope => "rope",
            Shader::Eltwise => "eltwise",
            Shader::Embedding => "embedding",
            Shader::KvStore => "kv_store",
            Shader::AttnScores => "attn_scores",
            Shader::AttnSoftmax => "attn_softmax",
            Shader::AttnValues => "attn_values",
        }
    }

    /// The SPIR-V, as `tools/compile-shaders` wrote it: the exact build, or
    /// (`exact == false`) the build without f64 where the shader has one.
    fn spirv(self, exact: bool) -> &'static [u8] {
        macro_rules! spv {
            ($name:literal) => {
                include_bytes!(concat!("../shaders/spv/", $name, ".spv"))
            };
        }
        macro_rules! two {
            ($name:literal) => {
                if exact {
                    spv!($name)
                } else {
                    include_bytes!(concat!("../shaders/spv/", $name, "_f32.spv"))
                }
            };
        }
        match self {
            Shader::QuantizeQ8 => spv!("quantize_q8"),
            Shader::QuantizeQ8K => spv!("quantize_q8k"),
            Shader::MatmulQ => two!("matmul_q"),
            Shader::MatmulK => spv!("matmul_k"),
            Shader::MatmulF16 => two!("matmul_f16"),
            Shader::MatmulF32 => two!("matmul_f32"),
            Shader::RmsNorm => two!("rms_norm"),
            Shader::Rope => two!("rope"),
            Shader::Eltwise => two!("eltwise"),
            Shader::Embedding => spv!("embedding"),
            Shader::KvStore => spv!("kv_store"),
            Shader::AttnScores => two!("attn_scores"),
            Shader::AttnSoftmax => two!("attn_softmax"),
            Shader::AttnValues => two!("attn_values"),
        }
    }

    /// Storage-buffer bindings, numbered from 0.
    pub(crate) fn bindings(self) -> u32 {
        match self {
            Shader::QuantizeQ8 | Shader::QuantizeQ8K | Shader::AttnSoftmax => 2,
            Shader::KvStore | Shader::AttnScores | Shader::AttnValues => 4,
            _ => 3,
        }
    }
}

/// Bytes of the push-constant range every pipeline declares.
pub(crate) const PUSH_BYTES: u32 = 64;

/// Invocations per workgroup (specialization constant 0 of every shader).
pub(crate) const WORKGROUP: u32 = 64;

/// A compute pipeline and its layouts.
pub(crate) struct Pipeline {
    ctx: Arc<Context>,
    pub(crate) pipeline: vk::Pipeline,
    pub(crate) layout: vk::PipelineLayout,
    pub(crate) set_layout: vk::DescriptorSetLayout,
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // SAFETY: executables hold an Arc of every pipeline they record and
        // wait for their submissions, so the device no longer uses it.
        unsafe {
            self.ctx.device.destroy_pipeline(self.pipeline, None);
            self.ctx.device.destroy_pipeline_layout(self.layout, None);
            self.ctx
                .device
                .destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

/// Pipelines by (shader, variant), created lazily.
pub(crate) struct Pipelines {
    ctx: Arc<Context>,
    cache: vk::PipelineCache,
    cache_path: Option<PathBuf>,
    made: Mutex<HashMap<(Shader, u32), Arc<Pipeline>>>,
}

impl Pipelines {
    /// Opens the pipeline cache at `cache_path` (an unreadable or foreign
    /// file is ignored: the driver validates the header and starts empty).
    pub(crate) fn new(ctx: &Arc<Context>, cache_path: Option<PathBuf>) -> Result<Self, Error> {
        let initial = cache_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .filter(|data| cache_header_matches(ctx, data))
            .unwrap_or_default();
        let info = vk::PipelineCacheCreateInfo::default().initial_data(&initial);
        // SAFETY: a valid create info; the initial data was checked against
        // this device's cache header.
        let cache = unsafe { ctx.device.create_pipeline_cache(&info, None) }.map_err(|result| {
            Error::Vulkan {
                call: "vkCreatePipelineCache",
                result,
            }
        })?;
        Ok(Pipelines {
            ctx: ctx.clone(),
            cache,
            cache_path,
            made: Mutex::new(HashMap::new()),
        })
    }

    /// The pipeline of `shader` specialized for `variant` (constant 1).
    pub(crate) fn get(&self, shader: Shader, variant: u32) -> Result<Arc<Pipeline>, Error> {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = made.get(&(shader, variant)) {
            return Ok(p.clone());
        }
        let p = Arc::new(self.create(shader, variant)?);
        made.insert((shader, variant), p.clone());
        Ok(p)
    }

    fn create(&self, shader: Shader, variant: u32) -> Result<Pipeline, Error> {
        let device = &self.ctx.device;
        let vk_err = |call: &'static str| move |result| Error::Vulkan { call, result };
        let code = ash::util::read_spv(&mut std::io::Cursor::new(shader.spirv(self.ctx.exact)))
            .map_err(|e| Error::Shader(format!("{}: {e}", shader.name())))?;
        let module_info = vk::ShaderModuleCreateInfo::default().code(&code);
        // SAFETY: `code` is SPIR-V that spirv-val accepted (tools/compile-shaders).
        let module = unsafe { device.create_shader_module(&module_info, None) }
            .map_err(vk_err("vkCreateShaderModule"))?;
        let bindings: Vec<_> = (0..shader.bindings())
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let set_info = vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings);
        // Created in order; whatever exists is destroyed if a later step fails.
        let mut guard = CreateGuard {
            device,
            module,
            set_layout: vk::DescriptorSetLayout::null(),
            layout: vk::PipelineLayout::null(),
        };
        // SAFETY: a valid create info on a live device.
        guard.set_layout = unsafe { device.create_descriptor_set_layout(&set_info, None) }
            .map_err(vk_err("vkCreateDescriptorSetLayout"))?;
        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .offset(0)
            .size(PUSH_BYTES)];
        let set_layouts = [guard.set_layout];
        let layout_info = vk::PipelineLayoutCreateInfo::default()
            .set_layouts(&set_layouts)
            .push_constant_ranges(&push);
        // SAFETY: as above.
        guard.layout = unsafe { device.create_pipeline_layout(&layout_info, None) }
            .map_err(vk_err("vkCreatePipelineLayout"))?;
        let constants = [WORKGROUP, variant];
        let entries = [
            vk::SpecializationMapEntry::default()
                .constant_id(0)
                .offset(0)
                .size(4),
            vk::SpecializationMapEntry::default()
                .constant_id(1)
                .offset(4)
                .size(4),
        ];
        let spec = vk::SpecializationInfo::default()
            .map_entries(&entries)
            .data(bytemuck::cast_slice(&constants));
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main")
            .specialization_info(&spec);
        let info = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(guard.layout)];
        // SAFETY: the module, layout and specialization data live across the call.
        let pipelines = unsafe { device.create_compute_pipelines(self.cache, &info, None) }
            .map_err(|(_, result)| Error::Vulkan {
                call: "vkCreateComputePipelines",
                result,
            })?;
        let pipeline = pipelines.first().copied().ok_or(Error::Vulkan {
            call: "vkCreateComputePipelines",
            result: vk::Result::ERROR_UNKNOWN,
        })?;
        let (set_layout, layout) = (guard.set_layout, guard.layout);
        guard.set_layout = vk::DescriptorSetLayout::null();
        guard.layout = vk::PipelineLayout::null();
        drop(guard);
        let made = Pipeline {
            ctx: self.ctx.clone(),
            pipeline,
            layout,
            set_layout,
        };
        // A shader the device cannot run (a feature not enabled) is
        // reported here by the validation layer.
        self.ctx.check_validation()?;
        Ok(made)
    }

    /// Pipelines created so far.
    pub(crate) fn count(&self) -> usize {
        self.made.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Writes the pipeline cache to its file (atomically); returns its bytes.
    pub(crate) fn save(&self) -> Result<usize, Error> {
        let Some(path) = &self.cache_path else {
            return Ok(0);
        };
        // SAFETY: the cache is alive; the call only reads it.
        let data =
            unsafe { self.ctx.device.get_pipeline_cache_data(self.cache) }.map_err(|result| {
                Error::Vulkan {
                    call: "vkGetPipelineCacheData",
                    result,
                }
            })?;
        let io = |e: std::io::Error| Error::PipelineCache(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &data).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(data.len())
    }
}

/// Whether `data` starts with this device's pipeline-cache header (vendor,
/// device and cache UUID), so a file from another driver is never handed
/// to this one.
fn cache_header_matches(ctx: &Context, data: &[u8]) -> bool {
    // SAFETY: a plain query of the device the context opened.
    let props = unsafe { ctx.instance.get_physical_device_properties(ctx.physical) };
    let word = |at: usize| {
        data.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    data.len() >= 32
        && word(4) == Some(1) // VK_PIPELINE_CACHE_HEADER_VERSION_ONE
        && word(8) == Some(props.vendor_id)
        && word(12) == Some(props.device_id)
        && data.get(16..32) == Some(&props.pipeline_cache_uuid[..])
}

impl Drop for Pipelines {
    fn drop(&mut self) {
        // SAFETY: pipelines created from the cache keep no reference to it.
        unsafe { self.ctx.device.destroy_pipeline_cache(self.cache, None) };
    }
}

/// Destroys the partial objects of a failed pipeline creation.
struct CreateGuard<'d> {
    device: &'d ash::Device,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: these objects were created by `Pipelines::create` and are
        // not used by any pipeline that survives (the module never is
        // needed after creation; the layouts are nulled when handed over).
        unsafe {
            self.device.destroy_shader_module(self.module, None);
            if self.layout != vk::PipelineLayout::null() {
                self.device.destroy_pipeline_layout(self.layout, None);
            }
            if self.set_layout != vk::DescriptorSetLayout::null() {
                self.device
                    .destroy_descriptor_set_layout(self.set_layout, None);
            }
        }
    }
}
