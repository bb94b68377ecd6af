//! The GPU context: a `wgpu::Device` and `Queue`, either created by kvgpu from
//! the environment or handed in by an application that already has them.
//!
//! kvgpu never installs an uncaptured-error handler or a device-lost callback:
//! everything it does on the device runs inside error scopes it pushes and pops
//! itself, and errors come back as [`Error::Gpu`] values.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// What a layer above keeps once per device (the compiled kernels), stored
/// type-erased so that this module need not know their type.
pub(crate) type DeviceSlot = Arc<OnceLock<Arc<dyn Any + Send + Sync>>>;

/// A device and its queue. Clones share the device, and what is compiled
/// for it: the kernels are built once per `Gpu` and shared by every model
/// uploaded through it or its clones.
#[derive(Clone)]
pub struct Gpu {
    /// The device every kvgpu buffer and pipeline lives on.
    pub device: wgpu::Device,
    /// The queue kvgpu submits to: one submit per decoded token.
    pub queue: wgpu::Queue,
    /// The kernels compiled for `device`, once.
    pub(crate) kernels: DeviceSlot,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("device", &self.device)
            .field("queue", &self.queue)
            .field("kernels compiled", &self.kernels.get().is_some())
            .finish()
    }
}

impl Gpu {
    /// Creates a device on the adapter chosen by the environment: backends from
    /// `WGPU_BACKEND` (e.g. `vulkan`, `gl`; else the native APIs, then GL),
    /// then the first adapter whose name contains `adapter_name`
    /// (case-insensitive), else `WGPU_ADAPTER_NAME`, else the default adapter
    /// (`WGPU_POWER_PREF`). The device gets the adapter's own limits, since
    /// model weights outgrow WebGPU's default buffer and texture sizes.
    pub fn new(adapter_name: Option<&str>) -> Result<Self> {
        pollster::block_on(Self::new_async(adapter_name))
    }

    async fn new_async(adapter_name: Option<&str>) -> Result<Self> {
        let wanted = adapter_name
            .map(str::to_string)
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty());
        // Without WGPU_BACKEND: the native APIs first, GL only when none has
        // an adapter (probing EGL is slow and noisy on headless machines).
        let tiers = match std::env::var_os("WGPU_BACKEND") {
            Some(_) => vec![wgpu::Backends::all().with_env()],
            None => vec![wgpu::Backends::PRIMARY, wgpu::Backends::SECONDARY],
        };
        let mut available = Vec::new();
        for backends in tiers {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
                backends,
                ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
            });
            let adapters = instance.enumerate_adapters(backends).await;
            available.extend(adapters.iter().map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            }));
            let adapter = match &wanted {
                Some(name) => {
                    let lower = name.to_lowercase();
                    adapters
                        .into_iter()
                        .find(|a| a.get_info().name.to_lowercase().contains(&lower))
                }
                None => instance
                    .request_adapter(&wgpu::RequestAdapterOptions {
                        power_preference: wgpu::PowerPreference::from_env().unwrap_or_default(),
                        ..Default::default()
                    })
                    .await
                    .ok(),
            };
            if let Some(adapter) = adapter {
                return Self::open(adapter).await;
            }
        }
        Err(Error::NoAdapter { wanted, available })
    }

    /// A device on `adapter` with the adapter's own limits: model weights
    /// outgrow WebGPU's default buffer and texture sizes, and a GL or
    /// downlevel adapter may allow less than those defaults elsewhere (the
    /// kernels' needs are checked against the device's limits by name).
    async fn open(adapter: wgpu::Adapter) -> Result<Self> {
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("kvgpu"),
                required_limits: adapter.limits(),
                // GPU time per kernel (Session::profile), a pipeline cache
                // for the kernels, and subgroups for their faster builds,
                // where the adapter has them.
                required_features: adapter.features()
                    & (wgpu::Features::TIMESTAMP_QUERY
                        | wgpu::Features::PIPELINE_CACHE
                        | wgpu::Features::SUBGROUP),
                ..Default::default()
            })
            .await?;
        Ok(Self::from_device(device, queue))
    }

    /// Uses an application's device and queue. kvgpu will not touch the
    /// device's error handlers; its buffers are freed when the last
    /// kvgpu object using them is dropped.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self {
            device,
            queue,
            kernels: DeviceSlot::default(),
        }
    }

    /// The adapter's name and backend, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)".
    pub fn describe(&self) -> String {
        let i = self.device.adapter_info();
        format!("{} ({:?})", i.name, i.backend)
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes on
    /// this device; the first error caught becomes [`Error::Gpu`].
    pub fn scoped<T>(&self, context: &'static str, f: impl FnOnce() -> T) -> Result<T> {
        scoped(&self.device, context, f)
    }

    /// [`Error::DeviceLost`] if the device was lost or destroyed. kvgpu
    /// asks before creating anything on the device, and after a GPU error.
    pub fn check_alive(&self) -> Result<()> {
        match device_lost(&self.device) {
            true => Err(Error::DeviceLost),
            false => Ok(()),
        }
    }

    /// Copies `size` bytes at the start of `src` into a fresh buffer and reads
    /// them back. For tests and one-off inspection: decoding uses its own
    /// persistent readback buffers.
    pub fn read_buffer(&self, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let staging = self.scoped("reading a buffer back", || {
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kvgpu readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut encoder = self.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(src, 0, &staging, 0, size);
            self.queue.submit([encoder.finish()]);
            staging
        })?;
        let mut out = vec![0u8; size as usize];
        self.map_read(&staging, &mut out)?;
        Ok(out)
    }

    /// Waits for submitted work, maps `buffer` (MAP_READ) and copies its first
    /// `out.len()` bytes into `out`. A failed map on a lost device is
    /// [`Error::DeviceLost`].
    pub(crate) fn map_read(&self, buffer: &wgpu::Buffer, out: &mut [u8]) -> Result<()> {
        let slice = buffer.slice(..out.len() as u64);
        let (tx, rx) = std::sync::mpsc::channel();
        // A failed map reaches the callback; keep its error off the app's handler.
        let _ = capture(&self.device, || {
            slice.map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            })
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Readback(e.to_string()))?
            .map_err(|e| match device_lost(&self.device) {
                true => Error::DeviceLost,
                false => Error::Readback(e.to_string()),
            })?;
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            out.copy_from_slice(&view);
        }
        buffer.unmap();
        Ok(())
    }
}

/// Runs `f` inside validation, out-of-memory and internal error scopes on
/// `device`: the first error caught becomes [`Error::Gpu`], or
/// [`Error::DeviceLost`] when the device is gone.
pub(crate) fn scoped<T>(
    device: &wgpu::Device,
    context: &'static str,
    f: impl FnOnce() -> T,
) -> Result<T> {
    match capture(device, f) {
        (value, None) => Ok(value),
        (_, Some(_)) if device_lost(device) => Err(Error::DeviceLost),
        // The caller that knows how much it asked for fills `requested` in.
        (_, Some(wgpu::Error::OutOfMemory { .. })) => Err(Error::OutOfMemory {
            what: context.to_string(),
            requested: 0,
            limit: None,
        }),
        (_, Some(e)) => Err(Error::Gpu {
            context,
            message: e.to_string(),
        }),
    }
}

/// `f`'s value and the first error it raised on `device`, none of which
/// reaches the device's uncaptured-error handler.
fn capture<T>(device: &wgpu::Device, f: impl FnOnce() -> T) -> (T, Option<wgpu::Error>) {
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let value = f();
    // Scopes pop in reverse order of their pushes.
    let errors = [
        pollster::block_on(validation.pop()),
        pollster::block_on(oom.pop()),
        pollster::block_on(internal.pop()),
    ];
    (value, errors.into_iter().flatten().next())
}

/// Whether `device` was lost or destroyed, found by mapping a 4-byte buffer
/// through it (a map on a lost device fails): kvgpu installs no device-lost
/// callback, so an app's own stays its own. About a millisecond.
pub(crate) fn device_lost(device: &wgpu::Device) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let (probe, _) = capture(device, || {
        let probe = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kvgpu device probe"),
            size: 4,
            usage: wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        probe.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r.is_ok());
        });
        probe
    });
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    // A map that neither succeeded nor failed during the wait is no sign of loss.
    let lost = rx.try_recv().is_ok_and(|mapped| !mapped);
    if !lost {
        let _ = capture(device, || probe.unmap());
    }
    lost
}

/// A buffer holding `contents` (wgpu's `create_buffer_init`, which panics
/// when the device is gone; here the buffer is then left unfilled, and the
/// error scope or probe around the call reports the loss).
pub(crate) fn buffer_init(
    device: &wgpu::Device,
    label: &str,
    contents: &[u8],
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    let size = (contents.len() as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(wgpu::COPY_BUFFER_ALIGNMENT),
        usage,
        mapped_at_creation: true,
    });
    if let Ok(mut view) = buffer.get_mapped_range_mut(..) {
        view.slice(..contents.len()).copy_from_slice(contents);
    }
    buffer.unmap();
    buffer
}
