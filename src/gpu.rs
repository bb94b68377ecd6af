//! The GPU context: a `wgpu::Device` and `Queue`, either created by kvgpu from
//! the environment or handed in by an application that already has them.
//!
//! kvgpu never installs an uncaptured-error handler or a device-lost callback:
//! everything it does on the device runs inside error scopes it pushes and pops
//! itself, and errors come back as [`Error::Gpu`] values.

use std::any::Any;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::kernel_cache::{self, KernelCache};

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
    /// Where the compiled kernels are kept between runs, and what
    /// compiling them has cost.
    pub(crate) compiling: Arc<Compiling>,
}

/// What [`Gpu::compiled`] reports: pipelines compiled on a device so far,
/// and the time their creation took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Compute pipelines created.
    pub pipelines: usize,
    /// Wall time spent creating them and their shader modules.
    pub time: Duration,
}

/// A device's kernel compilation: the folder its pipeline cache is kept
/// in (set once, before the kernels compile) and running totals.
#[derive(Debug, Default)]
pub(crate) struct Compiling {
    /// [`Gpu::keep_kernels_in`]'s folder.
    pub(crate) dir: OnceLock<PathBuf>,
    /// The pipeline cache the kernels compile through, made once.
    cache: OnceLock<PipelineCache>,
    pipelines: AtomicUsize,
    nanos: AtomicU64,
}

/// A device's pipeline cache and the file it is kept in.
#[derive(Debug)]
struct PipelineCache {
    /// None where the device has no pipeline caches.
    cache: Option<wgpu::PipelineCache>,
    status: KernelCache,
    /// (file, key, checksum of the data the file holds now).
    file: Option<(PathBuf, String, Mutex<u64>)>,
}

impl Compiling {
    /// Counts `pipelines` created (0 for a shader module) in `time`.
    pub(crate) fn add(&self, pipelines: usize, time: Duration) {
        self.pipelines.fetch_add(pipelines, Ordering::Relaxed);
        let nanos = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("device", &self.device)
            .field("queue", &self.queue)
            .field("kernels compiled", &self.kernels.get().is_some())
            .field("kernel cache folder", &self.compiling.dir.get())
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
            compiling: Arc::default(),
        }
    }

    /// Keeps the driver's compiled kernels in `dir` between runs, where the
    /// device has a pipeline cache (wgpu offers them on Vulkan): the first
    /// model uploaded reads the file for this adapter, driver and kvgpu
    /// build, and [`Gpu::save_kernels`] writes it. A file that is
    /// unreadable, damaged or from another adapter, driver or build is
    /// ignored and replaced. Call before uploading a model; returns false
    /// (and changes nothing) once the kernels are compiled or a folder is set.
    pub fn keep_kernels_in(&self, dir: impl Into<PathBuf>) -> bool {
        self.kernels.get().is_none() && self.compiling.dir.set(dir.into()).is_ok()
    }

    /// The kernels' pipeline cache: read from [`Gpu::keep_kernels_in`]'s
    /// folder when that holds a good file for `kernels` (a hash of their
    /// sources), else empty; made on the first call, which the kernels'
    /// compilation makes.
    pub(crate) fn pipeline_cache(&self, kernels: u64) -> Option<&wgpu::PipelineCache> {
        let made = self.compiling.cache.get_or_init(|| {
            let device = &self.device;
            if !device.features().contains(wgpu::Features::PIPELINE_CACHE) {
                let status = KernelCache::Unsupported;
                return PipelineCache {
                    cache: None,
                    status,
                    file: None,
                };
            }
            let info = device.adapter_info();
            let path = (self.compiling.dir.get()).and_then(|dir| kernel_cache::path(dir, &info));
            let key = kernel_cache::key(&info, kernels);
            let data = path.as_ref().map(|p| kernel_cache::read(p, &key));
            let create = |data: Option<&[u8]>| {
                // SAFETY: wgpu checks its own header in `data` (the adapter
                // and the driver's cache id); `kernel_cache::read` gave
                // only data whose checksum and key (adapter, driver,
                // kvgpu, wgpu, kernel sources) match what was saved from
                // this adapter. With `fallback`, data wgpu refuses gives
                // an empty cache.
                unsafe {
                    device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                        label: Some("kvgpu kernels"),
                        data,
                        fallback: true,
                    })
                }
            };
            let (cache, status) = match (path.clone(), data) {
                (Some(path), Some(Ok(data))) => {
                    let bytes = data.len() as u64;
                    (create(Some(&data)), KernelCache::Loaded { path, bytes })
                }
                (Some(path), Some(Err(why))) => (create(None), KernelCache::Empty { path, why }),
                _ => (create(None), KernelCache::Unsupported),
            };
            // What the file holds now: nothing to write until that changes.
            let held = match &status {
                KernelCache::Loaded { .. } => {
                    cache.get_data().map_or(0, |d| kernel_cache::checksum(&d))
                }
                _ => 0,
            };
            PipelineCache {
                cache: Some(cache),
                status,
                file: path.map(|p| (p, key, Mutex::new(held))),
            }
        });
        made.cache.as_ref()
    }

    /// Where the kernels' pipeline cache came from, once they are compiled
    /// (the first model upload compiles them).
    pub fn kernel_cache(&self) -> Option<&KernelCache> {
        self.compiling.cache.get().map(|c| &c.status)
    }

    /// Writes the kernels' pipeline cache to [`Gpu::keep_kernels_in`]'s
    /// folder when it holds pipelines the file lacks: the bytes written,
    /// or None when there was nothing to write (no folder, no pipeline
    /// cache, or nothing new). Call once the pipelines a run needs are
    /// compiled (after its first token).
    pub fn save_kernels(&self) -> Result<Option<u64>> {
        let Some(PipelineCache {
            cache: Some(cache),
            file: Some((path, key, held)),
            ..
        }) = self.compiling.cache.get()
        else {
            return Ok(None);
        };
        let Some(data) = cache.get_data() else {
            return Ok(None);
        };
        let sum = kernel_cache::checksum(&data);
        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
        if *held == sum {
            return Ok(None);
        }
        kernel_cache::write(path, key, &data)?;
        *held = sum;
        Ok(Some(data.len() as u64))
    }

    /// Pipelines compiled on this device so far (by every clone of this
    /// `Gpu`), and the time it took: what start-up spends before the first token.
    pub fn compiled(&self) -> Compiled {
        Compiled {
            pipelines: self.compiling.pipelines.load(Ordering::Relaxed),
            time: Duration::from_nanos(self.compiling.nanos.load(Ordering::Relaxed)),
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
