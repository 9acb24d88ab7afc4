//! The compute pipelines, one per shader in `kernels/` (SPIR-V compiled by build.rs from the
//! GLSL beside this file), and the weight types they cover.
//!
//! - `matvec_<type>.spv` (`matvec.comp` + `dequant/<type>.glsl`, which may splice in a helper
//!   such as `dequant/iq4_grid.glsl`): routed-expert matrix times f32 activation rows,
//!   dequantizing the raw GGUF blocks as it reads them, over tiles of routes of one expert
//!   (`tile_io.glsl`, `tile_main.glsl`; see `tiles.rs`). Each type's shader becomes two
//!   pipelines: tiles of one route (a decode step's experts) and of up to [`ROUTE_TILE`].
//! - `matvec_fast_<type>.spv` (`matvec_fast.comp` + `fast/<type>.glsl`): the fast numeric
//!   mode's matvec over int8 activations, integer dot products per 32 values
//!   (`GL_EXT_integer_dot_product`); built only on a device with `shaderIntegerDotProduct`.
//! - `quantize.spv`: f32 rows to the fast matvec's int8 activation blocks.
//! - `swiglu.spv`: `silu(gate) * up` in place.
//! - `combine.spv`: the weighted add of every route's output into its token's row.
//! - attention's (`attention.rs`): `rms_norm.spv` (rows in place), `rope.spv` (query heads'
//!   rope parts from a host table), `gather.spv` (strided row copies between token- and
//!   head-major layouts), `attend.spv` (scores, softmax and context over the cache rows),
//!   `kv_store.spv` (new cache rows rounded to the cache type into the device copy).
//!
//! This module builds pipelines and records dispatches; which dispatches a MoE layer needs
//! is `expert_compute.rs`'s decision.

use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use ash::vk;
use moe_kernels::GgmlType;

use crate::device::{Buffer, Device};
use crate::VulkanError;

/// The most routes of one expert a tiled matvec workgroup computes (the shaders'
/// `ROUTE_TILE` specialization constant): they share each weight read; more routes hold more
/// accumulators per thread.
pub const ROUTE_TILE: usize = 8;

/// Push constants of the tiled matvec shaders (`tile_io.glsl`).
const MATVEC_PUSH_WORDS: usize = 8;
/// Storage buffers of the matvec shaders: weights, activations, outputs, route metadata.
const MATVEC_BINDINGS: u32 = 4;

/// Threads of one elementwise workgroup (`local_size_x` of swiglu.comp and combine.comp).
pub const ELEMENTWISE_GROUP_THREADS: u32 = 64;
/// Values each matvec thread reads per step: inner dimensions must be a multiple of it.
pub const MATVEC_CHUNK_VALUES: usize = 32;
/// Words of one quantized 32-value activation block (`quantize.comp`): 8 words of int8
/// codes (value `4k + i` in byte `i` of word `k`), the f32 scale's bits, and the signed code
/// sums of values 0..16 (low 16 bits) and 16..32 (high 16 bits).
pub const QBLOCK_WORDS: usize = 10;

/// The weight types with a matvec shader, with their SPIR-V.
const MATVEC_SPIRV: [(GgmlType, &[u8]); 15] = [
    (
        GgmlType::F32,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_f32.spv")),
    ),
    (
        GgmlType::F16,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_f16.spv")),
    ),
    (
        GgmlType::BF16,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_bf16.spv")),
    ),
    (
        GgmlType::Q8_0,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q8_0.spv")),
    ),
    (
        GgmlType::Q4_0,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q4_0.spv")),
    ),
    (
        GgmlType::Q4_1,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q4_1.spv")),
    ),
    (
        GgmlType::Q5_0,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q5_0.spv")),
    ),
    (
        GgmlType::Q5_1,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q5_1.spv")),
    ),
    (
        GgmlType::Q2_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q2_k.spv")),
    ),
    (
        GgmlType::Q3_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q3_k.spv")),
    ),
    (
        GgmlType::Q4_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q4_k.spv")),
    ),
    (
        GgmlType::Q5_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q5_k.spv")),
    ),
    (
        GgmlType::Q6_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_q6_k.spv")),
    ),
    (
        GgmlType::IQ4_NL,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_iq4_nl.spv")),
    ),
    (
        GgmlType::IQ4_XS,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_iq4_xs.spv")),
    ),
];
/// The weight types with an integer-dot matvec shader (the fast mode), with their SPIR-V.
const MATVEC_FAST_SPIRV: [(GgmlType, &[u8]); 8] = [
    (
        GgmlType::Q8_0,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_q8_0.spv")),
    ),
    (
        GgmlType::Q2_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_q2_k.spv")),
    ),
    (
        GgmlType::Q3_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_q3_k.spv")),
    ),
    (
        GgmlType::Q4_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_q4_k.spv")),
    ),
    (
        GgmlType::Q5_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_q5_k.spv")),
    ),
    (
        GgmlType::Q6_K,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_q6_k.spv")),
    ),
    (
        GgmlType::IQ4_NL,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_iq4_nl.spv")),
    ),
    (
        GgmlType::IQ4_XS,
        include_bytes!(concat!(env!("OUT_DIR"), "/matvec_fast_iq4_xs.spv")),
    ),
];
const SWIGLU_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/swiglu.spv"));
const COMBINE_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/combine.spv"));
const QUANTIZE_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/quantize.spv"));
const RMS_NORM_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rms_norm.spv"));
const ROPE_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rope.spv"));
const GATHER_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gather.spv"));
const ATTEND_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/attend.spv"));
const KV_STORE_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv_store.spv"));

/// The weight types the matvec shaders read.
pub fn supported_types() -> impl Iterator<Item = GgmlType> {
    MATVEC_SPIRV.iter().map(|(t, _)| *t)
}

/// The weight types the fast mode computes with integer dot products on a device that has
/// them (the other supported types, F32, F16 and BF16, use the f32 shaders in both modes).
pub fn fast_types() -> impl Iterator<Item = GgmlType> {
    MATVEC_FAST_SPIRV.iter().map(|(t, _)| *t)
}

/// Names of [`supported_types`], for error messages.
pub fn supported_type_names() -> String {
    supported_types()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One compute pipeline: `bindings` storage buffers and `push_words` u32 push constants.
pub struct Kernel {
    pipeline: vk::Pipeline,
    layout: vk::PipelineLayout,
    pub(crate) set_layout: vk::DescriptorSetLayout,
    module: vk::ShaderModule,
    pub(crate) bindings: u32,
    push_words: usize,
    device: Arc<Device>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        // SAFETY: no submission using the pipeline is running (every call waits on its fence);
        // each object was created on this device and is destroyed once.
        unsafe {
            let d = &self.device.device;
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
            d.destroy_shader_module(self.module, None);
        }
    }
}

impl Kernel {
    fn new(
        device: &Arc<Device>,
        spirv: &[u8],
        bindings: u32,
        push_words: usize,
    ) -> Result<Self, VulkanError> {
        Self::specialized(device, spirv, bindings, push_words, &[])
    }

    /// As [`Kernel::new`], with `spec[i]` the value of specialization constant `i`.
    fn specialized(
        device: &Arc<Device>,
        spirv: &[u8],
        bindings: u32,
        push_words: usize,
        spec: &[u32],
    ) -> Result<Self, VulkanError> {
        let d = &device.device;
        let words: Vec<u32> = spirv
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // SAFETY: `words` is SPIR-V produced by glslang at build time.
        let module = unsafe {
            d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
        }
        .map_err(VulkanError::call("vkCreateShaderModule"))?;
        let binding_info: Vec<_> = (0..bindings)
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        // SAFETY: valid create infos on this device; every object is owned by the result.
        unsafe {
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&binding_info),
                    None,
                )
                .map_err(VulkanError::call("vkCreateDescriptorSetLayout"))?;
            let ranges = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .size((push_words * 4) as u32)];
            let set_layouts = [set_layout];
            let layout = d
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&set_layouts)
                        .push_constant_ranges(&ranges),
                    None,
                )
                .map_err(VulkanError::call("vkCreatePipelineLayout"))?;
            let entries: Vec<_> = (0..spec.len())
                .map(|i| vk::SpecializationMapEntry {
                    constant_id: i as u32,
                    offset: 4 * i as u32,
                    size: 4,
                })
                .collect();
            let spec_bytes: Vec<u8> = spec.iter().flat_map(|v| v.to_le_bytes()).collect();
            let spec_info = vk::SpecializationInfo::default()
                .map_entries(&entries)
                .data(&spec_bytes);
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main")
                .specialization_info(&spec_info);
            let info = [vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout)];
            let pipeline = d
                .create_compute_pipelines(vk::PipelineCache::null(), &info, None)
                .map_err(|(_, e)| VulkanError::call("vkCreateComputePipelines")(e))?[0];
            Ok(Self {
                pipeline,
                layout,
                set_layout,
                module,
                bindings,
                push_words,
                device: device.clone(),
            })
        }
    }

    /// Records one dispatch of `groups` workgroups over `buffers` (in binding order), with
    /// `set` a descriptor set of this kernel's layout (written here), then a barrier that makes
    /// its writes visible to the next dispatch and to the host.
    pub(crate) fn record(
        &self,
        cmd: vk::CommandBuffer,
        set: vk::DescriptorSet,
        buffers: &[&Buffer],
        push: &[u32],
        groups: [u32; 3],
    ) {
        assert_eq!(buffers.len(), self.bindings as usize, "binding count");
        assert_eq!(push.len(), self.push_words, "push constant count");
        let d = &self.device.device;
        let infos: Vec<[vk::DescriptorBufferInfo; 1]> = buffers
            .iter()
            .map(|b| {
                [vk::DescriptorBufferInfo::default()
                    .buffer(b.buffer)
                    .offset(0)
                    .range(vk::WHOLE_SIZE)]
            })
            .collect();
        let writes: Vec<_> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let push_bytes: Vec<u8> = push.iter().flat_map(|w| w.to_le_bytes()).collect();
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::HOST_READ)];
        // SAFETY: `set` is unused by any pending submission (its pool is reset only after the
        // fence wait); `cmd` is recording; the buffers outlive the submission (the caller holds
        // them until its fence wait returns).
        unsafe {
            d.update_descriptor_sets(&writes, &[]);
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            d.cmd_bind_descriptor_sets(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[set],
                &[],
            );
            d.cmd_push_constants(
                cmd,
                self.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &push_bytes,
            );
            d.cmd_dispatch(cmd, groups[0], groups[1], groups[2]);
            d.cmd_pipeline_barrier(
                cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
    }
}

/// One matvec shader's two pipelines: tiles of one route, built with the others, and tiles
/// of up to [`ROUTE_TILE`], built on first use (a decode-only node, or a CPU device that
/// never tiles, does not compile it).
struct TilePair {
    single: Kernel,
    tiled: OnceLock<Kernel>,
    spirv: &'static [u8],
}

impl TilePair {
    fn new(device: &Arc<Device>, spirv: &'static [u8]) -> Result<Self, VulkanError> {
        Ok(Self {
            single: Self::build(device, spirv, 1)?,
            tiled: OnceLock::new(),
            spirv,
        })
    }

    fn build(device: &Arc<Device>, spirv: &[u8], tile: usize) -> Result<Kernel, VulkanError> {
        Kernel::specialized(
            device,
            spirv,
            MATVEC_BINDINGS,
            MATVEC_PUSH_WORDS,
            &[tile as u32],
        )
    }

    /// The pipeline for tiles of `tile` routes (1 or [`ROUTE_TILE`]).
    fn get(&self, device: &Arc<Device>, tile: usize) -> Result<&Kernel, VulkanError> {
        debug_assert!(tile == 1 || tile == ROUTE_TILE, "tile {tile}");
        if tile == 1 {
            return Ok(&self.single);
        }
        if let Some(k) = self.tiled.get() {
            return Ok(k);
        }
        let k = Self::build(device, self.spirv, ROUTE_TILE)?;
        // A racing caller's pipeline may have landed first; either is the same pipeline.
        Ok(self.tiled.get_or_init(|| k))
    }
}

/// Every pipeline of the backend.
pub struct Kernels {
    matvec: Vec<(GgmlType, TilePair)>,
    /// Empty on a device without `shaderIntegerDotProduct`.
    matvec_fast: Vec<(GgmlType, TilePair)>,
    pub(crate) device: Arc<Device>,
    /// `quantize.comp`: bindings x, q; push blocks, base.
    pub quantize: Kernel,
    /// `swiglu.comp`: bindings gate, up; push n, base.
    pub swiglu: Kernel,
    /// `combine.comp`: bindings y, weights, tok_start, tok_routes, out; push tokens, dim, base.
    pub combine: Kernel,
    /// `rms_norm.comp`: bindings rows, gain; push width, stride, eps bits (a workgroup a row).
    pub rms_norm: Kernel,
    /// `rope.comp`: bindings rows, cos/sin table; push rows, heads, stride, offset, pairs, base.
    pub rope: Kernel,
    /// `gather.comp`: bindings src, dst; push n_a, n_b, width, src_a, src_b, dst_a, dst_b, base.
    pub gather: Kernel,
    /// `attend.comp`: bindings q_abs, q, cache rows, scores, ctx; push see the shader (a
    /// workgroup a query row).
    pub attend: Kernel,
    /// `kv_store.comp`: bindings new rows, device cache copy; push n, at, kind, base.
    pub kv_store: Kernel,
}

/// The pipelines [`Kernels::shared`] built, by device, while anything holds them.
static SHARED: Mutex<Vec<(Weak<Device>, Weak<Kernels>)>> = Mutex::new(Vec::new());

impl Kernels {
    /// `device`'s pipelines, built once for every user of the device (the experts, the
    /// layers) while anything holds them.
    pub fn shared(device: &Arc<Device>) -> Result<Arc<Self>, VulkanError> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        shared.retain(|(_, k)| k.strong_count() > 0);
        let mine = Arc::downgrade(device);
        let held = shared.iter().find(|(d, _)| d.ptr_eq(&mine));
        if let Some(kernels) = held.and_then(|(_, k)| k.upgrade()) {
            return Ok(kernels);
        }
        let kernels = Arc::new(Self::new(device)?);
        shared.push((mine, Arc::downgrade(&kernels)));
        Ok(kernels)
    }

    /// Builds every pipeline on `device`.
    pub fn new(device: &Arc<Device>) -> Result<Self, VulkanError> {
        Ok(Self {
            matvec: MATVEC_SPIRV
                .iter()
                .map(|&(ty, spirv)| Ok((ty, TilePair::new(device, spirv)?)))
                .collect::<Result<_, VulkanError>>()?,
            matvec_fast: if device.integer_dot {
                MATVEC_FAST_SPIRV
                    .iter()
                    .map(|&(ty, spirv)| Ok((ty, TilePair::new(device, spirv)?)))
                    .collect::<Result<_, VulkanError>>()?
            } else {
                Vec::new()
            },
            quantize: Kernel::new(device, QUANTIZE_SPIRV, 2, 2)?,
            swiglu: Kernel::new(device, SWIGLU_SPIRV, 2, 2)?,
            combine: Kernel::new(device, COMBINE_SPIRV, 5, 3)?,
            rms_norm: Kernel::new(device, RMS_NORM_SPIRV, 2, 3)?,
            rope: Kernel::new(device, ROPE_SPIRV, 2, 6)?,
            gather: Kernel::new(device, GATHER_SPIRV, 2, 8)?,
            attend: Kernel::new(device, ATTEND_SPIRV, 5, 10)?,
            kv_store: Kernel::new(device, KV_STORE_SPIRV, 2, 4)?,
            device: device.clone(),
        })
    }

    /// The matvec pipeline of weight type `ty` (bindings weights, x, y, route metadata; push
    /// constants [`crate::tiles::TileMeta::push`]) for tiles of up to `tile` routes (1 or
    /// [`ROUTE_TILE`]), if it has one (`Ok(None)`), or why it could not be built.
    pub fn matvec(&self, ty: GgmlType, tile: usize) -> Result<Option<&Kernel>, VulkanError> {
        self.pick(&self.matvec, ty, tile)
    }

    /// The integer-dot matvec pipeline of weight type `ty` (bindings weights, quantized
    /// activations, y, route metadata; push constants and `tile` as [`Kernels::matvec`]), if
    /// it has one and the device has integer dot products.
    pub fn matvec_fast(&self, ty: GgmlType, tile: usize) -> Result<Option<&Kernel>, VulkanError> {
        self.pick(&self.matvec_fast, ty, tile)
    }

    /// `ty`'s pipeline in `pairs` for tiles of `tile` routes.
    fn pick<'a>(
        &'a self,
        pairs: &'a [(GgmlType, TilePair)],
        ty: GgmlType,
        tile: usize,
    ) -> Result<Option<&'a Kernel>, VulkanError> {
        match pairs.iter().find(|(t, _)| *t == ty) {
            Some((_, pair)) => pair.get(&self.device, tile).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the integer-dot pipelines were built (the device has integer dot products).
    pub fn has_fast(&self) -> bool {
        !self.matvec_fast.is_empty()
    }
}
