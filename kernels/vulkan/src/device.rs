//! A logical device with one compute queue, and storage buffers on it. A process opens each
//! device once ([`Device::shared`]): its experts and its layers share the device's memory
//! and queue (submissions serialized, as Vulkan asks).
//!
//! Memory: a buffer is host-visible and coherent, mapped once for its lifetime, preferring a
//! device-local type (unified memory, resizable BAR, lavapipe), which keeps uploads and read-backs
//! to plain copies; or device-only, filled through a staging buffer ([`Buffer::device_only`], a
//! discrete GPU's weights). Where the device has `VK_EXT_external_memory_host` (lavapipe, RADV,
//! NVIDIA), a buffer can instead be a view of host memory, such as a map of the model file
//! ([`Buffer::import`]): on a unified-memory device ([`Device::unified_memory`]) the expert weights
//! are then read where the page cache holds them, not copied. What the buffers hold and which
//! kernels run over them is decided by `expert_weights.rs` and `expert_compute.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ash::vk;

use crate::instance::{DeviceInfo, Instance};
use crate::VulkanError;

/// A logical device and its compute queue.
pub struct Device {
    pub(crate) device: ash::Device,
    pub(crate) queue: vk::Queue,
    /// Held around `vkQueueSubmit` on `queue`, which must be externally synchronized: several
    /// command buffers (the experts', the layers') submit to it.
    pub(crate) submit_lock: Mutex<()>,
    /// Submissions so far ([`Device::submissions`]).
    pub(crate) submitted: AtomicU64,
    pub(crate) queue_family: u32,
    pub(crate) memory_type: u32,
    /// A device-local type in the largest device-local heap (for device-only buffers filled
    /// by staging copies: a discrete GPU's own memory).
    pub(crate) device_memory_type: u32,
    /// What `moe-node devices` says about it.
    pub info: DeviceInfo,
    /// `maxComputeWorkGroupCount`.
    pub(crate) max_groups: [u32; 3],
    /// `shaderIntegerDotProduct` enabled on this device (the fast mode's shaders need it).
    pub(crate) integer_dot: bool,
    /// Host-memory import, where the device has it.
    pub(crate) host_import: Option<HostImport>,
    // Dropped last: the instance outlives the device (held, never read).
    _instance: Arc<Instance>,
}

/// `VK_EXT_external_memory_host`, enabled on a device that has it.
pub(crate) struct HostImport {
    /// `minImportedHostPointerAlignment`: imported pointers and sizes are multiples of it.
    pub alignment: u64,
    fns: ash::ext::external_memory_host::Device,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("info", &self.info).finish()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every buffer, pipeline and pool of this device holds an `Arc<Device>` and is
        // dropped before it; waiting for idle makes sure no submitted work is still running.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
        }
    }
}

/// The devices [`Device::shared`] handed out, by index, while anything holds them.
static SHARED: Mutex<Vec<(usize, Weak<Device>)>> = Mutex::new(Vec::new());

impl Device {
    /// Device `index` as the process's one logical device for it: the first call opens it
    /// ([`Device::open`]), later calls get the same device as long as anything holds it, so
    /// a process's experts and layers share its memory and queue.
    pub fn shared(index: usize) -> Result<Arc<Self>, VulkanError> {
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        shared.retain(|(_, d)| d.strong_count() > 0);
        let held = shared.iter().find(|(i, _)| *i == index);
        if let Some(device) = held.and_then(|(_, d)| d.upgrade()) {
            return Ok(device);
        }
        let device = Self::open(index)?;
        shared.push((index, Arc::downgrade(&device)));
        Ok(device)
    }

    /// Opens device `index` (as `moe-node devices` numbers them): a logical device of its
    /// own (see [`Device::shared`]).
    pub fn open(index: usize) -> Result<Arc<Self>, VulkanError> {
        Self::open_with(index, true)
    }

    /// As [`Device::open`], leaving `shaderIntegerDotProduct` disabled even where the device
    /// has it: the fast mode then runs on the f32 shaders, as on a device without integer
    /// dot products (tests use it to check that fallback).
    pub fn open_without_integer_dot_product(index: usize) -> Result<Arc<Self>, VulkanError> {
        Self::open_with(index, false)
    }

    fn open_with(index: usize, want_integer_dot: bool) -> Result<Arc<Self>, VulkanError> {
        let instance = Arc::new(Instance::new()?);
        let pds = instance.physical_devices()?;
        if pds.is_empty() {
            return Err(VulkanError::NoDevice);
        }
        let &pd = pds.get(index).ok_or(VulkanError::DeviceIndex {
            index,
            count: pds.len(),
        })?;
        let info = instance.describe(index, pd)?;
        let unusable = |what: &str| VulkanError::Unusable {
            device: info.name.clone(),
            what: what.into(),
        };
        // SAFETY: `pd` came from this instance.
        let families = unsafe {
            instance
                .instance
                .get_physical_device_queue_family_properties(pd)
        };
        let queue_family = families
            .iter()
            .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| unusable("no queue family with compute"))?
            as u32;
        // SAFETY: as above.
        let mem = unsafe { instance.instance.get_physical_device_memory_properties(pd) };
        let device_memory_type = pick_device_memory_type(&mem).unwrap_or(0);
        let memory_type = pick_memory_type(&mem)
            .ok_or_else(|| unusable("no host-visible, host-coherent memory type"))?;
        // SAFETY: as above.
        let limits = unsafe { instance.instance.get_physical_device_properties(pd) }.limits;
        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(queue_family)
            .queue_priorities(&priorities)];
        // Integer dot products (the fast mode's shaders): the feature where the device has
        // it, with its extension where the device lists it (core from Vulkan 1.3).
        let integer_dot = want_integer_dot && info.integer_dot_product;
        let extensions = instance.device_extensions(pd)?;
        let offered = |name: &std::ffi::CStr| extensions.iter().any(|e| e.as_c_str() == name);
        let dot_ext = offered(ash::khr::shader_integer_dot_product::NAME);
        let mut ext_ptrs: Vec<*const std::ffi::c_char> = if integer_dot && dot_ext {
            vec![ash::khr::shader_integer_dot_product::NAME.as_ptr()]
        } else {
            Vec::new()
        };
        let host_import_alignment = if offered(ash::ext::external_memory_host::NAME) {
            ext_ptrs.push(ash::ext::external_memory_host::NAME.as_ptr());
            let mut host = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut host);
            // SAFETY: `pd` came from this instance, which is Vulkan 1.1 or later (checked
            // by `Instance::new`); the chain holds a structure of an extension it offers.
            unsafe {
                instance
                    .instance
                    .get_physical_device_properties2(pd, &mut props)
            };
            Some(host.min_imported_host_pointer_alignment.max(1))
        } else {
            None
        };
        let mut dot_features = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default()
            .shader_integer_dot_product(true);
        let mut create = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue_info)
            .enabled_extension_names(&ext_ptrs);
        if integer_dot {
            create = create.push_next(&mut dot_features);
        }
        // SAFETY: `create` and what it points to live across the call; `pd` is valid.
        let device = unsafe { instance.instance.create_device(pd, &create, None) }
            .map_err(VulkanError::call("vkCreateDevice"))?;
        // SAFETY: the family and index were requested in `create`.
        let queue = unsafe { device.get_device_queue(queue_family, 0) };
        let host_import = host_import_alignment.map(|alignment| HostImport {
            alignment,
            fns: ash::ext::external_memory_host::Device::new(&instance.instance, &device),
        });
        Ok(Arc::new(Self {
            device,
            queue,
            submit_lock: Mutex::new(()),
            submitted: AtomicU64::new(0),
            queue_family,
            memory_type,
            device_memory_type,
            info,
            max_groups: limits.max_compute_work_group_count,
            integer_dot,
            host_import,
            _instance: instance,
        }))
    }

    /// Command buffers submitted to this device so far (each one a host round trip: the
    /// host waits for it).
    pub fn submissions(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Whether the fast numeric mode's integer-dot shaders can run here
    /// (`shaderIntegerDotProduct`, enabled when the device was opened).
    pub fn has_integer_dot_product(&self) -> bool {
        self.integer_dot
    }

    /// Whether the device computes out of the host's memory: an integrated GPU or a CPU
    /// implementation (a discrete GPU reading imported host memory would read it over the
    /// bus).
    pub fn unified_memory(&self) -> bool {
        self.info.kind == "integrated GPU" || self.is_cpu()
    }

    /// Whether the device is a CPU implementation (lavapipe).
    pub fn is_cpu(&self) -> bool {
        self.info.kind == "CPU"
    }

    /// `minImportedHostPointerAlignment` where the device imports host memory
    /// ([`Buffer::import`]), else `None`.
    pub fn host_import_alignment(&self) -> Option<u64> {
        self.host_import.as_ref().map(|h| h.alignment)
    }

    /// `maxStorageBufferRange`, bytes: the most one shader binding can see.
    pub fn max_binding_bytes(&self) -> u64 {
        self.info.max_storage_buffer_range_bytes as u64
    }
}

/// A device-local type in the largest device-local heap, preferring one the host cannot map
/// (on a discrete GPU the host-visible device-local types may sit in a small BAR heap).
fn pick_device_memory_type(mem: &vk::PhysicalDeviceMemoryProperties) -> Option<u32> {
    let types = &mem.memory_types[..mem.memory_type_count as usize];
    (0..types.len())
        .filter(|&i| {
            types[i]
                .property_flags
                .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
        })
        .max_by_key(|&i| {
            let host = types[i]
                .property_flags
                .contains(vk::MemoryPropertyFlags::HOST_VISIBLE);
            (mem.memory_heaps[types[i].heap_index as usize].size, !host)
        })
        .map(|i| i as u32)
}

/// Host-visible and coherent, device-local if such a type exists.
fn pick_memory_type(mem: &vk::PhysicalDeviceMemoryProperties) -> Option<u32> {
    let types = &mem.memory_types[..mem.memory_type_count as usize];
    let host = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
    let find = |want: vk::MemoryPropertyFlags| {
        types
            .iter()
            .position(|t| t.property_flags.contains(want))
            .map(|i| i as u32)
    };
    find(host | vk::MemoryPropertyFlags::DEVICE_LOCAL).or_else(|| find(host))
}

/// A storage buffer in host-visible memory, mapped for its whole life, or a view of host
/// memory imported read-only ([`Buffer::import`]).
pub struct Buffer {
    pub(crate) buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut u8,
    /// Bytes.
    pub(crate) len: usize,
    /// Where the bytes are.
    kind: BufferKind,
    device: Arc<Device>,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through `&self` for
// reads and `&mut self` for writes, so Rust's aliasing rules cover it as for a `Vec<u8>`.
unsafe impl Send for Buffer {}
// SAFETY: as above.
unsafe impl Sync for Buffer {}

/// Where a [`Buffer`]'s bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferKind {
    /// Host-visible memory allocated on the device, mapped for the buffer's life.
    Mapped,
    /// Host memory imported read-only (maybe a file map).
    Imported,
    /// Device memory the host does not map, filled by staging copies.
    DeviceOnly,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.len).finish()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the owner waits for every submission using this buffer before dropping it
        // (each call waits on its fence); the memory is unmapped by freeing it.
        unsafe {
            self.device.device.destroy_buffer(self.buffer, None);
            self.device.device.free_memory(self.memory, None);
        }
    }
}

impl Buffer {
    /// A buffer of `len` bytes (allocated in whole u32 words, 4 bytes at least; contents
    /// undefined until written) in mapped host-visible memory; `what` names it in errors (a
    /// tensor, or a scratch buffer).
    pub fn new(device: &Arc<Device>, len: usize, what: &str) -> Result<Self, VulkanError> {
        Self::allocate(device, len, what, BufferKind::Mapped)
    }

    /// As [`Buffer::new`], in device memory the host does not map (filled with
    /// [`crate::commands::Commands::copy`] from a mapped buffer).
    pub fn device_only(device: &Arc<Device>, len: usize, what: &str) -> Result<Self, VulkanError> {
        Self::allocate(device, len, what, BufferKind::DeviceOnly)
    }

    fn allocate(
        device: &Arc<Device>,
        len: usize,
        what: &str,
        kind: BufferKind,
    ) -> Result<Self, VulkanError> {
        // Whole u32 words: the shaders read bytes through u32 loads.
        let size = (len.max(4) as u64).next_multiple_of(4);
        let dev = &device.device;
        let (usage, memory_type) = match kind {
            BufferKind::DeviceOnly => (
                vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST,
                device.device_memory_type,
            ),
            _ => (
                vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_SRC,
                device.memory_type,
            ),
        };
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a valid device and create info.
        let buffer = unsafe { dev.create_buffer(&info, None) }
            .map_err(VulkanError::call("vkCreateBuffer"))?;
        // SAFETY: `buffer` was just created on this device.
        let req = unsafe { dev.get_buffer_memory_requirements(buffer) };
        let fail = |call: &'static str, result: vk::Result| {
            // SAFETY: `buffer` is unused and destroyed once.
            unsafe { dev.destroy_buffer(buffer, None) };
            if result == vk::Result::ERROR_OUT_OF_DEVICE_MEMORY
                || result == vk::Result::ERROR_OUT_OF_HOST_MEMORY
            {
                VulkanError::DeviceLimit {
                    tensor: what.into(),
                    what: format!("{size} bytes do not fit in device memory ({result})"),
                }
            } else {
                VulkanError::Call { call, result }
            }
        };
        if req.memory_type_bits & (1 << memory_type) == 0 {
            return Err(fail(
                "vkGetBufferMemoryRequirements",
                vk::Result::ERROR_FORMAT_NOT_SUPPORTED,
            ));
        }
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(memory_type);
        // SAFETY: a valid device and allocate info.
        let memory = match unsafe { dev.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(e) => return Err(fail("vkAllocateMemory", e)),
        };
        // SAFETY: both were created on this device and are unbound; mapped memory is host
        // visible, so mapping it whole is allowed.
        let ptr = unsafe {
            dev.bind_buffer_memory(buffer, memory, 0)
                .and_then(|()| match kind {
                    BufferKind::DeviceOnly => Ok(std::ptr::null_mut()),
                    _ => dev.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()),
                })
        };
        match ptr {
            Ok(ptr) => Ok(Self {
                buffer,
                memory,
                ptr: ptr.cast(),
                len,
                kind,
                device: device.clone(),
            }),
            Err(e) => {
                // SAFETY: unused memory, freed once.
                unsafe { dev.free_memory(memory, None) };
                Err(fail("vkMapMemory", e))
            }
        }
    }

    /// A buffer over the `len` bytes of host memory at `ptr` (both multiples of
    /// [`Device::host_import_alignment`]), which the device reads in place; `what` names it in
    /// errors. Never written through (the memory may be a read-only file map).
    ///
    /// # Safety
    /// The memory must stay mapped and unmodified for the buffer's life.
    pub(crate) unsafe fn import(
        device: &Arc<Device>,
        ptr: *const u8,
        len: usize,
        what: &str,
    ) -> Result<Self, VulkanError> {
        let unusable = |why: String| VulkanError::Unusable {
            device: device.info.name.clone(),
            what: format!("importing {what}: {why}"),
        };
        let host = device
            .host_import
            .as_ref()
            .ok_or_else(|| unusable("no VK_EXT_external_memory_host".into()))?;
        if !(ptr as u64).is_multiple_of(host.alignment)
            || !(len as u64).is_multiple_of(host.alignment)
            || len == 0
        {
            return Err(unusable(format!(
                "{len} bytes at {ptr:p} are not multiples of minImportedHostPointerAlignment ({})",
                host.alignment
            )));
        }
        let dev = &device.device;
        let handle = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut external = vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle);
        let info = vk::BufferCreateInfo::default()
            .size(len as u64)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER)
            .sharing_mode(vk::SharingMode::EXCLUSIVE)
            .push_next(&mut external);
        // SAFETY: a valid device and create info (the extension is enabled).
        let buffer = unsafe { dev.create_buffer(&info, None) }
            .map_err(VulkanError::call("vkCreateBuffer"))?;
        let destroy = || {
            // SAFETY: `buffer` is unused and destroyed once.
            unsafe { dev.destroy_buffer(buffer, None) }
        };
        // SAFETY: `buffer` was just created on this device.
        let req = unsafe { dev.get_buffer_memory_requirements(buffer) };
        let mut props = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: `ptr` is a host allocation of at least `len` bytes (the caller's contract).
        let queried = unsafe {
            (host.fns.fp().get_memory_host_pointer_properties_ext)(
                host.fns.device(),
                handle,
                ptr.cast(),
                &mut props,
            )
        }
        .result();
        let bits = props.memory_type_bits & req.memory_type_bits;
        if let Err(e) = queried {
            destroy();
            return Err(VulkanError::call("vkGetMemoryHostPointerPropertiesEXT")(e));
        }
        if bits == 0 || req.size > len as u64 {
            destroy();
            return Err(unusable(format!(
                "no memory type takes it (host pointer types {:#x}, buffer types {:#x}, {} bytes needed)",
                props.memory_type_bits, req.memory_type_bits, req.size
            )));
        }
        let memory_type = if bits & (1 << device.memory_type) != 0 {
            device.memory_type
        } else {
            bits.trailing_zeros()
        };
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(handle)
            .host_pointer(ptr.cast_mut().cast());
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(len as u64)
            .memory_type_index(memory_type)
            .push_next(&mut import);
        // SAFETY: a valid device and allocate info; the memory outlives the allocation (the
        // caller's contract).
        let memory = match unsafe { dev.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(e) => {
                destroy();
                return Err(VulkanError::call("vkAllocateMemory (host import)")(e));
            }
        };
        // SAFETY: both were created on this device; the buffer is unbound.
        if let Err(e) = unsafe { dev.bind_buffer_memory(buffer, memory, 0) } {
            // SAFETY: unused memory, freed once.
            unsafe { dev.free_memory(memory, None) };
            destroy();
            return Err(VulkanError::call("vkBindBufferMemory")(e));
        }
        Ok(Self {
            buffer,
            memory,
            ptr: ptr.cast_mut(),
            len,
            kind: BufferKind::Imported,
            device: device.clone(),
        })
    }

    /// Where this buffer's bytes are.
    pub(crate) fn kind(&self) -> BufferKind {
        self.kind
    }

    /// The mapped bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        assert_eq!(
            self.kind,
            BufferKind::Mapped,
            "only mapped buffers are written by the host (an imported one may be a read-only file map)"
        );
        // SAFETY: `ptr` maps at least `len` bytes for the buffer's life; `&mut self` makes the
        // slice the only view; no submission is running (callers wait on their fence).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        assert_ne!(
            self.kind,
            BufferKind::DeviceOnly,
            "a device-only buffer is not mapped"
        );
        // SAFETY: as in `bytes_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Writes `src` at byte `offset`.
    pub fn write(&mut self, offset: usize, src: &[u8]) {
        self.bytes_mut()[offset..offset + src.len()].copy_from_slice(src);
    }
}
