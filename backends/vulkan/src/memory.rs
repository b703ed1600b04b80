//! Storage buffers allocated with gpu-allocator.
//!
//! Buffers the host reads or writes every run (the mirrors of a session's
//! boundary buffers, KV cache and arena, the per-run tables) are
//! host-visible and persistently mapped. Weights live where the device
//! reads them fastest; when that memory is not host-visible (a discrete
//! GPU) they are uploaded once through a staging buffer.

use crate::device::Context;
use crate::Error;
use ash::vk;
use gpu_allocator::vulkan::{Allocation, AllocationCreateDesc, AllocationScheme};
use gpu_allocator::MemoryLocation;
use std::sync::Arc;

/// A storage buffer and its memory.
pub struct Buffer {
    ctx: Arc<Context>,
    pub(crate) buffer: vk::Buffer,
    allocation: Option<Allocation>,
    size: u64,
}

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Host-visible and mapped: read and written by the host every run.
    Shared,
    /// Device-local; written once (through staging when not mappable).
    Device,
}

impl Buffer {
    /// A buffer of `size` bytes (at least 4: Vulkan rejects empty buffers).
    pub fn new(
        ctx: &Arc<Context>,
        name: &str,
        size: u64,
        placement: Placement,
    ) -> Result<Self, Error> {
        let size = size.max(4).next_multiple_of(4);
        let usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST;
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a valid create info on a live device.
        let buffer =
            unsafe { ctx.device.create_buffer(&info, None) }.map_err(|result| Error::Vulkan {
                call: "vkCreateBuffer",
                result,
            })?;
        // SAFETY: `buffer` was just created on this device.
        let requirements = unsafe { ctx.device.get_buffer_memory_requirements(buffer) };
        let location = match placement {
            Placement::Shared => MemoryLocation::CpuToGpu,
            Placement::Device => MemoryLocation::GpuOnly,
        };
        let allocated = {
            let mut slot = ctx.allocator.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_mut() {
                Some(allocator) => allocator
                    .allocate(&AllocationCreateDesc {
                        name,
                        requirements,
                        location,
                        linear: true,
                        allocation_scheme: AllocationScheme::GpuAllocatorManaged,
                    })
                    .map_err(|e| Error::Memory(format!("{name} ({size} bytes): {e}"))),
                None => Err(Error::Memory("the allocator is gone".into())),
            }
        };
        let allocation = match allocated {
            Ok(a) => a,
            Err(e) => {
                // SAFETY: the buffer has no memory bound and is unused.
                unsafe { ctx.device.destroy_buffer(buffer, None) };
                return Err(e);
            }
        };
        // SAFETY: the allocation satisfies the buffer's requirements and
        // outlives the binding (it is freed after the buffer is destroyed).
        let bound = unsafe {
            ctx.device
                .bind_buffer_memory(buffer, allocation.memory(), allocation.offset())
        };
        let mut me = Buffer {
            ctx: ctx.clone(),
            buffer,
            allocation: Some(allocation),
            size,
        };
        bound.map_err(|result| Error::Vulkan {
            call: "vkBindBufferMemory",
            result,
        })?;
        if me.mapped_mut().is_some() {
            // Fresh memory: zero it, so padding rows read as zeros.
            if let Some(bytes) = me.mapped_mut() {
                bytes.fill(0);
            }
        }
        Ok(me)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the host reads this memory at full speed and sees the
    /// device's writes without flushes (host-visible, coherent and cached:
    /// unified memory, lavapipe's included).
    pub fn unified(&self) -> bool {
        let wanted = vk::MemoryPropertyFlags::HOST_VISIBLE
            | vk::MemoryPropertyFlags::HOST_COHERENT
            | vk::MemoryPropertyFlags::HOST_CACHED;
        self.allocation
            .as_ref()
            .is_some_and(|a| a.memory_properties().contains(wanted) && a.mapped_ptr().is_some())
    }

    /// The mapped bytes, when the memory is host-visible.
    pub fn mapped(&self) -> Option<&[u8]> {
        self.allocation.as_ref()?.mapped_slice()
    }

    pub fn mapped_mut(&mut self) -> Option<&mut [u8]> {
        self.allocation.as_mut()?.mapped_slice_mut()
    }

    /// Writes `bytes` at `offset`: directly when mapped, else through a
    /// staging buffer and a transfer on the queue.
    pub fn upload(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Error> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                Error::Memory(format!(
                    "upload of {} bytes at {offset} past the buffer",
                    bytes.len()
                ))
            })?;
        if let Some(mapped) = self.mapped_mut() {
            mapped[offset as usize..end as usize].copy_from_slice(bytes);
            return Ok(());
        }
        let mut staging = Buffer::new(&self.ctx, "staging", bytes.len() as u64, Placement::Shared)?;
        let Some(dst) = staging.mapped_mut() else {
            return Err(Error::Memory("host-visible memory is not mapped".into()));
        };
        dst[..bytes.len()].copy_from_slice(bytes);
        let region = vk::BufferCopy::default()
            .src_offset(0)
            .dst_offset(offset)
            .size(bytes.len() as u64);
        crate::exec::one_shot(&self.ctx, |device, cmd| {
            // SAFETY: both buffers are alive until the one-shot submission
            // has completed (it waits on its fence).
            unsafe { device.cmd_copy_buffer(cmd, staging.buffer, self.buffer, &[region]) };
        })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: executables wait for their submissions before returning,
        // so the device no longer uses this buffer.
        unsafe { self.ctx.device.destroy_buffer(self.buffer, None) };
        if let Some(allocation) = self.allocation.take() {
            let mut slot = self.ctx.allocator.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(allocator) = slot.as_mut() {
                let _ = allocator.free(allocation);
            }
        }
    }
}
