//! One reusable command buffer: record dispatches, submit, wait. Descriptor sets come from a
//! pool that is reset after each wait, so a recording may use up to [`SETS_PER_SUBMIT_MAX`]
//! dispatches. Calls are serialized by the owner (one `Commands` per lock).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use ash::vk;

use crate::device::{Buffer, Device};
use crate::kernels::{Kernel, ELEMENTWISE_GROUP_THREADS};
use crate::VulkanError;

/// Dispatches (descriptor sets) one submission may record.
pub const SETS_PER_SUBMIT_MAX: u32 = 4096;
/// Storage-buffer bindings of the widest kernel.
const BINDINGS_PER_SET_MAX: u32 = 5;
/// How long one submission may run before it is reported as hung, in nanoseconds (60 s).
const SUBMIT_TIMEOUT_NS: u64 = 60_000_000_000;

/// A command pool with one command buffer, its fence and a descriptor pool.
pub struct Commands {
    pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    sets: vk::DescriptorPool,
    used_sets: u32,
    recording: bool,
    device: Arc<Device>,
}

impl Drop for Commands {
    fn drop(&mut self) {
        // SAFETY: nothing is pending (every submit waits for its fence); each object was
        // created on this device and is destroyed once.
        unsafe {
            let d = &self.device.device;
            d.destroy_descriptor_pool(self.sets, None);
            d.destroy_fence(self.fence, None);
            d.destroy_command_pool(self.pool, None);
        }
    }
}

impl Commands {
    /// A command buffer on `device`'s compute queue.
    pub fn new(device: &Arc<Device>) -> Result<Self, VulkanError> {
        let d = &device.device;
        // SAFETY: valid create infos on this device; every object is owned by the result.
        unsafe {
            let pool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(device.queue_family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                )
                .map_err(VulkanError::call("vkCreateCommandPool"))?;
            let cmd = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .level(vk::CommandBufferLevel::PRIMARY)
                        .command_buffer_count(1),
                )
                .map_err(VulkanError::call("vkAllocateCommandBuffers"))?[0];
            let fence = d
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .map_err(VulkanError::call("vkCreateFence"))?;
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(SETS_PER_SUBMIT_MAX * BINDINGS_PER_SET_MAX)];
            let sets = d
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(SETS_PER_SUBMIT_MAX)
                        .pool_sizes(&sizes),
                    None,
                )
                .map_err(VulkanError::call("vkCreateDescriptorPool"))?;
            Ok(Self {
                pool,
                cmd,
                fence,
                sets,
                used_sets: 0,
                recording: false,
                device: device.clone(),
            })
        }
    }

    /// Starts recording (if not already) and returns the command buffer with a fresh
    /// descriptor set for `kernel`.
    pub(crate) fn next(
        &mut self,
        kernel: &Kernel,
    ) -> Result<(vk::CommandBuffer, vk::DescriptorSet), VulkanError> {
        if self.used_sets >= SETS_PER_SUBMIT_MAX {
            return Err(VulkanError::InvalidInput(format!(
                "one call needs more than {SETS_PER_SUBMIT_MAX} dispatches"
            )));
        }
        self.begin()?;
        let d = &self.device.device;
        let layouts = [kernel.set_layout];
        // SAFETY: the pool has room (counted above) and the layout is valid.
        let set = unsafe {
            d.allocate_descriptor_sets(
                &vk::DescriptorSetAllocateInfo::default()
                    .descriptor_pool(self.sets)
                    .set_layouts(&layouts),
            )
        }
        .map_err(VulkanError::call("vkAllocateDescriptorSets"))?[0];
        self.used_sets += 1;
        Ok((self.cmd, set))
    }

    /// Starts recording if not already.
    fn begin(&mut self) -> Result<(), VulkanError> {
        if !self.recording {
            // SAFETY: the buffer is not pending (the last submit waited on the fence).
            unsafe {
                self.device.device.begin_command_buffer(
                    self.cmd,
                    &vk::CommandBufferBeginInfo::default()
                        .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                )
            }
            .map_err(VulkanError::call("vkBeginCommandBuffer"))?;
            self.recording = true;
        }
        Ok(())
    }

    /// Records a copy of `src`'s first `bytes` bytes to `dst` at `dst_offset`, then a barrier
    /// that makes them visible to later dispatches.
    pub(crate) fn copy(
        &mut self,
        src: &Buffer,
        dst: &Buffer,
        dst_offset: u64,
        bytes: u64,
    ) -> Result<(), VulkanError> {
        self.begin()?;
        let d = &self.device.device;
        let region = [vk::BufferCopy::default()
            .src_offset(0)
            .dst_offset(dst_offset)
            .size(bytes)];
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::SHADER_READ)];
        // SAFETY: `cmd` is recording; both buffers were made with the transfer usages and
        // outlive the submission (the caller waits before dropping or rewriting them).
        unsafe {
            d.cmd_copy_buffer(self.cmd, src.buffer, dst.buffer, &region);
            d.cmd_pipeline_barrier(
                self.cmd,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
        Ok(())
    }

    /// Submits what was recorded and waits for it; then the descriptor sets are free again.
    pub fn submit_and_wait(&mut self) -> Result<(), VulkanError> {
        if !self.recording {
            return Ok(());
        }
        let d = &self.device.device;
        self.recording = false;
        let cmds = [self.cmd];
        // SAFETY: `cmd` was recorded by this object; the fence is unsignaled (reset after each
        // wait); the descriptor pool is reset only after the wait.
        unsafe {
            d.end_command_buffer(self.cmd)
                .map_err(VulkanError::call("vkEndCommandBuffer"))?;
            let queue = self
                .device
                .submit_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            d.queue_submit(
                self.device.queue,
                &[vk::SubmitInfo::default().command_buffers(&cmds)],
                self.fence,
            )
            .map_err(VulkanError::call("vkQueueSubmit"))?;
            drop(queue);
            self.device.submitted.fetch_add(1, Ordering::Relaxed);
            let waited = d.wait_for_fences(&[self.fence], true, SUBMIT_TIMEOUT_NS);
            if let Err(e) = waited {
                // A hung or lost device: leave the fence as it is, the error says which.
                return Err(VulkanError::call("vkWaitForFences")(e));
            }
            d.reset_fences(&[self.fence])
                .map_err(VulkanError::call("vkResetFences"))?;
            d.reset_descriptor_pool(self.sets, vk::DescriptorPoolResetFlags::empty())
                .map_err(VulkanError::call("vkResetDescriptorPool"))?;
            d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())
                .map_err(VulkanError::call("vkResetCommandBuffer"))?;
        }
        self.used_sets = 0;
        Ok(())
    }
}

impl Commands {
    /// Records an elementwise kernel over `n` items (push constants `push`, then the first
    /// item of each dispatch), split to fit `maxComputeWorkGroupCount[0]`.
    pub(crate) fn elementwise(
        &mut self,
        device: &Device,
        kernel: &Kernel,
        buffers: &[&Buffer],
        push: &[u32],
        n: usize,
    ) -> Result<(), VulkanError> {
        let per_dispatch = device.max_groups[0] as usize * ELEMENTWISE_GROUP_THREADS as usize;
        let mut base = 0;
        while base < n {
            let count = (n - base).min(per_dispatch);
            let (cmd, set) = self.next(kernel)?;
            let mut words = push.to_vec();
            words.push(base as u32);
            kernel.record(
                cmd,
                set,
                buffers,
                &words,
                [(count as u32).div_ceil(ELEMENTWISE_GROUP_THREADS), 1, 1],
            );
            base += count;
        }
        Ok(())
    }
}
