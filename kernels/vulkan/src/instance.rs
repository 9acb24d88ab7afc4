//! The Vulkan loader and instance, and what each physical device offers ([`DeviceInfo`], the
//! `moe-node devices` listing). The loader is opened at run time, so a machine without one
//! gets [`VulkanError::NoLoader`] here rather than a binary that does not start.
//!
//! Creating a logical device and computing on it is `device.rs`'s job.

use std::ffi::CStr;

use ash::vk;

use crate::VulkanError;

/// The newest Vulkan version this backend asks for (1.3: integer dot products are core).
const API_VERSION_WANTED: u32 = vk::API_VERSION_1_3;

/// An opened loader and a Vulkan instance.
pub struct Instance {
    // Field order is drop order: the instance is destroyed in `Drop`, the loader's library is
    // closed after it when `entry` drops.
    pub(crate) instance: ash::Instance,
    pub(crate) api_version: u32,
    _entry: ash::Entry,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("api_version", &version_string(self.api_version))
            .finish()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every object created from this instance (devices) holds an `Arc` to it and is
        // dropped first; nothing uses the instance after this.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// One physical device as `moe-node devices` lists it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Index for `--device N`.
    pub index: usize,
    /// `deviceName`.
    pub name: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub kind: &'static str,
    /// Driver name and info (Vulkan 1.2 driver properties), or the vendor id without them.
    pub driver: String,
    /// The device's Vulkan version.
    pub api_version: String,
    /// `shaderIntegerDotProduct` (Vulkan 1.3 or `VK_KHR_shader_integer_dot_product`).
    pub integer_dot_product: bool,
    /// `VK_KHR_cooperative_matrix` offered.
    pub cooperative_matrix: bool,
    /// `VK_EXT_external_memory_host` offered (experts read in place from the file's pages
    /// on a unified-memory device).
    pub host_memory_import: bool,
    /// Subgroup size (Vulkan 1.1).
    pub subgroup_size: u32,
    /// `maxStorageBufferRange`, bytes.
    pub max_storage_buffer_range_bytes: u32,
    /// Memory heaps: (bytes, device-local).
    pub heaps: Vec<(u64, bool)>,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "device {}: {} ({})", self.index, self.name, self.kind)?;
        writeln!(f, "  driver: {}", self.driver)?;
        writeln!(f, "  Vulkan: {}", self.api_version)?;
        writeln!(
            f,
            "  integer dot product: {}",
            yes_no(self.integer_dot_product)
        )?;
        writeln!(
            f,
            "  cooperative matrix: {}",
            yes_no(self.cooperative_matrix)
        )?;
        writeln!(
            f,
            "  host memory import: {}",
            yes_no(self.host_memory_import)
        )?;
        writeln!(f, "  subgroup size: {}", self.subgroup_size)?;
        writeln!(
            f,
            "  maxStorageBufferRange: {} bytes ({:.1} MiB)",
            self.max_storage_buffer_range_bytes,
            self.max_storage_buffer_range_bytes as f64 / 1048576.0
        )?;
        for (i, (bytes, local)) in self.heaps.iter().enumerate() {
            writeln!(
                f,
                "  memory heap {i}: {:.2} GiB{}",
                *bytes as f64 / 1073741824.0,
                if *local { " (device-local)" } else { "" }
            )?;
        }
        Ok(())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

impl Instance {
    /// Opens the loader and creates an instance.
    pub fn new() -> Result<Self, VulkanError> {
        // SAFETY: loading libvulkan runs its initializers; the Vulkan loader is designed to be
        // loaded this way (it is what linking to it does at start-up).
        let entry =
            unsafe { ash::Entry::load() }.map_err(|e| VulkanError::NoLoader(e.to_string()))?;
        // SAFETY: a global command, valid with a loaded entry.
        let loader_version = match unsafe { entry.try_enumerate_instance_version() } {
            Ok(Some(v)) => v,
            Ok(None) => vk::API_VERSION_1_0,
            Err(e) => return Err(VulkanError::call("vkEnumerateInstanceVersion")(e)),
        };
        if loader_version < vk::API_VERSION_1_1 {
            return Err(VulkanError::NoLoader(format!(
                "the Vulkan loader offers version {}, this backend needs 1.1",
                version_string(loader_version)
            )));
        }
        let api_version = loader_version.min(API_VERSION_WANTED);
        let app = vk::ApplicationInfo::default()
            .application_name(c"moe-node")
            .api_version(api_version);
        // Portability (MoltenVK) devices are listed only with this flag and extension.
        let exts = instance_extensions(&entry);
        let portability = exts
            .iter()
            .any(|e| e.as_c_str() == ash::khr::portability_enumeration::NAME);
        let ext_ptrs: Vec<*const std::ffi::c_char> = if portability {
            vec![ash::khr::portability_enumeration::NAME.as_ptr()]
        } else {
            Vec::new()
        };
        let info = vk::InstanceCreateInfo::default()
            .application_info(&app)
            .enabled_extension_names(&ext_ptrs)
            .flags(if portability {
                vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR
            } else {
                vk::InstanceCreateFlags::empty()
            });
        // SAFETY: `info` and what it points to live across the call.
        let instance = match unsafe { entry.create_instance(&info, None) } {
            Ok(i) => i,
            // What the loader answers when it found no driver (ICD) at all.
            Err(vk::Result::ERROR_INCOMPATIBLE_DRIVER) => return Err(VulkanError::NoDevice),
            Err(e) => return Err(VulkanError::call("vkCreateInstance")(e)),
        };
        Ok(Self {
            instance,
            api_version,
            _entry: entry,
        })
    }

    /// The physical devices, in the order `--device N` counts them.
    pub(crate) fn physical_devices(&self) -> Result<Vec<vk::PhysicalDevice>, VulkanError> {
        // SAFETY: a valid instance.
        unsafe { self.instance.enumerate_physical_devices() }
            .map_err(VulkanError::call("vkEnumeratePhysicalDevices"))
    }

    /// Every physical device with the properties that matter to this runtime; an error when
    /// there is none.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, VulkanError> {
        let pds = self.physical_devices()?;
        if pds.is_empty() {
            return Err(VulkanError::NoDevice);
        }
        pds.iter()
            .enumerate()
            .map(|(index, &pd)| self.describe(index, pd))
            .collect()
    }

    /// The extensions device `pd` offers.
    pub(crate) fn device_extensions(
        &self,
        pd: vk::PhysicalDevice,
    ) -> Result<Vec<std::ffi::CString>, VulkanError> {
        // SAFETY: `pd` came from this instance.
        let props = unsafe { self.instance.enumerate_device_extension_properties(pd) }
            .map_err(VulkanError::call("vkEnumerateDeviceExtensionProperties"))?;
        Ok(props
            .iter()
            .filter_map(|p| p.extension_name_as_c_str().ok().map(CStr::to_owned))
            .collect())
    }

    pub(crate) fn describe(
        &self,
        index: usize,
        pd: vk::PhysicalDevice,
    ) -> Result<DeviceInfo, VulkanError> {
        let exts = self.device_extensions(pd)?;
        let has = |name: &CStr| exts.iter().any(|e| e.as_c_str() == name);
        // SAFETY: `pd` came from this instance.
        let base = unsafe { self.instance.get_physical_device_properties(pd) };
        let version = base.api_version.min(self.api_version);
        let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let has_driver = version >= vk::API_VERSION_1_2 || has(ash::khr::driver_properties::NAME);
        {
            let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
            if has_driver {
                props = props.push_next(&mut driver);
            }
            // SAFETY: the chain holds only structures of the device's version or extensions.
            unsafe {
                self.instance
                    .get_physical_device_properties2(pd, &mut props)
            };
        }
        let mut dot = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default();
        let has_dot_struct =
            version >= vk::API_VERSION_1_3 || has(ash::khr::shader_integer_dot_product::NAME);
        if has_dot_struct {
            let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut dot);
            // SAFETY: as above.
            unsafe {
                self.instance
                    .get_physical_device_features2(pd, &mut features)
            };
        }
        // SAFETY: `pd` came from this instance.
        let mem = unsafe { self.instance.get_physical_device_memory_properties(pd) };
        let heaps = mem.memory_heaps[..mem.memory_heap_count as usize]
            .iter()
            .map(|h| (h.size, h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL)))
            .collect();
        let name = base
            .device_name_as_c_str()
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "(unnamed)".into());
        let driver = if has_driver {
            format!(
                "{} ({})",
                driver
                    .driver_name_as_c_str()
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                driver
                    .driver_info_as_c_str()
                    .map(|c| c.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        } else {
            format!(
                "vendor {:#06x}, driver version {:#x}",
                base.vendor_id, base.driver_version
            )
        };
        Ok(DeviceInfo {
            index,
            name,
            kind: match base.device_type {
                vk::PhysicalDeviceType::DISCRETE_GPU => "discrete GPU",
                vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated GPU",
                vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual GPU",
                vk::PhysicalDeviceType::CPU => "CPU",
                _ => "other",
            },
            driver,
            api_version: version_string(base.api_version),
            integer_dot_product: has_dot_struct && dot.shader_integer_dot_product == vk::TRUE,
            cooperative_matrix: has(c"VK_KHR_cooperative_matrix"),
            host_memory_import: has(c"VK_EXT_external_memory_host"),
            subgroup_size: subgroup.subgroup_size,
            max_storage_buffer_range_bytes: base.limits.max_storage_buffer_range,
            heaps,
        })
    }
}

fn instance_extensions(entry: &ash::Entry) -> Vec<std::ffi::CString> {
    // SAFETY: a global command, valid with a loaded entry.
    unsafe { entry.enumerate_instance_extension_properties(None) }
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.extension_name_as_c_str().ok().map(CStr::to_owned))
        .collect()
}
