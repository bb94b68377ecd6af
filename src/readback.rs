//! Results read back from the GPU without blocking: a session copies a
//! pass's result into its readback buffer inside the encoder it records
//! into; the caller submits that encoder; [`Pending::poll`] then maps the
//! buffer and polls the device with `PollType::Poll`, which never waits.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Where one session's readback buffer is in its round trip.
#[derive(Debug)]
pub(crate) enum MapState {
    /// Free: no copy into it is recorded, nothing is mapped.
    Idle,
    /// A copy into it is recorded in an encoder that may not be submitted yet.
    Recorded,
    /// `map_async` was called (after the submit); the callback has not run.
    Requested,
    /// The callback ran: mapped, or why not.
    Done(std::result::Result<(), String>),
}

/// A session's readback buffer and its state, shared with the [`Pending`]
/// reading it.
#[derive(Debug)]
pub(crate) struct ReadbackBuffer {
    pub buffer: wgpu::Buffer,
    pub state: Arc<Mutex<MapState>>,
}

impl ReadbackBuffer {
    /// A MAP_READ buffer of `bytes`. Call inside an error scope.
    pub fn new(device: &wgpu::Device, bytes: u64) -> Self {
        Self {
            buffer: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kvgpu readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            state: Arc::new(Mutex::new(MapState::Idle)),
        }
    }

    /// Claims the buffer for a new copy: free, or freed now if the last
    /// [`Pending`] was dropped after its map completed; else
    /// [`Error::ReadbackPending`]. Polls `device` without waiting.
    pub fn claim(&self, device: &wgpu::Device) -> Result<()> {
        let mut state = self.state.lock().expect("readback state");
        if matches!(*state, MapState::Requested) {
            drop(state);
            let _ = device.poll(wgpu::PollType::Poll);
            state = self.state.lock().expect("readback state");
        }
        match &*state {
            MapState::Idle => {}
            MapState::Done(Ok(())) => self.buffer.unmap(),
            MapState::Done(Err(_)) => {}
            MapState::Recorded | MapState::Requested => return Err(Error::ReadbackPending),
        }
        *state = MapState::Recorded;
        Ok(())
    }
}

/// What a pass read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The greedy tokens of a block of steps, one per step.
    Tokens(Vec<u32>),
    /// The logits of the pass's last token, (vocab_size,).
    Logits(Vec<f32>),
}

/// Which [`Output`] a pending readback holds, and its size.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Tokens(usize),
    Logits(usize),
}

impl Kind {
    /// Bytes read back.
    pub fn bytes(self) -> u64 {
        match self {
            Kind::Tokens(n) | Kind::Logits(n) => 4 * n as u64,
        }
    }
}

/// A pass recorded into the caller's encoder whose result has not been read
/// yet. Submit the encoder first, then [`Pending::poll`] it (each frame, say)
/// until it returns `Some`; a poll never waits for the GPU. Dropping it
/// forgets the result. The session it came from records no other readback
/// until this one is read or dropped.
#[derive(Debug)]
pub struct Pending {
    device: wgpu::Device,
    buffer: wgpu::Buffer,
    state: Arc<Mutex<MapState>>,
    kind: Kind,
    /// The result, once read (polls after it return it again).
    output: Option<Output>,
}

impl Pending {
    pub(crate) fn new(device: &wgpu::Device, readback: &ReadbackBuffer, kind: Kind) -> Self {
        Self {
            device: device.clone(),
            buffer: readback.buffer.clone(),
            state: readback.state.clone(),
            kind,
            output: None,
        }
    }

    /// The result if the GPU has finished the pass, else `None`; never
    /// blocks. Call only after the encoder holding the pass was submitted.
    pub fn poll(&mut self) -> Option<Result<Output>> {
        self.advance(wgpu::PollType::Poll)
    }

    /// Waits for the result (for callers that may block, unlike a render thread).
    pub fn wait(mut self) -> Result<Output> {
        loop {
            if let Some(r) = self.advance(wgpu::PollType::wait_indefinitely()) {
                return r;
            }
            // Another thread's poll on this device is running our map callback.
            std::thread::yield_now();
        }
    }

    /// Waits for the result and copies its bytes into `out` (no allocation).
    pub(crate) fn wait_into(self, out: &mut [u8]) -> Result<()> {
        self.request();
        loop {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Readback(e.to_string()))?;
            if let Some(r) = self.take(|bytes| out.copy_from_slice(&bytes[..out.len()])) {
                return r;
            }
            // Another thread's poll on this device is running our map callback.
            std::thread::yield_now();
        }
    }

    fn advance(&mut self, poll: wgpu::PollType) -> Option<Result<Output>> {
        if let Some(o) = &self.output {
            return Some(Ok(o.clone()));
        }
        self.request();
        if let Err(e) = self.device.poll(poll) {
            return Some(Err(Error::Readback(e.to_string())));
        }
        let kind = self.kind;
        let output = self.take(|bytes| match kind {
            Kind::Tokens(_) => Output::Tokens(bytemuck::pod_collect_to_vec(bytes)),
            Kind::Logits(_) => Output::Logits(bytemuck::pod_collect_to_vec(bytes)),
        })?;
        if let Ok(o) = &output {
            self.output = Some(o.clone());
        }
        Some(output)
    }

    /// Maps the buffer, once: the submit that fills it has happened.
    fn request(&self) {
        let mut state = self.state.lock().expect("readback state");
        if matches!(*state, MapState::Recorded) {
            *state = MapState::Requested;
            drop(state);
            let shared = self.state.clone();
            // A failed map reaches the callback; keep its error off the app's handler.
            let _ = crate::gpu::scoped(&self.device, "mapping a readback", || {
                self.buffer
                    .slice(..self.kind.bytes())
                    .map_async(wgpu::MapMode::Read, move |r| {
                        *shared.lock().expect("readback state") =
                            MapState::Done(r.map_err(|e| e.to_string()));
                    })
            });
        }
    }

    /// `read(the mapped bytes)` once the map is done, then unmaps; `None` before.
    fn take<T>(&self, read: impl FnOnce(&[u8]) -> T) -> Option<Result<T>> {
        let mut state = self.state.lock().expect("readback state");
        let result = match &*state {
            MapState::Done(Ok(())) => {
                let slice = self.buffer.slice(..self.kind.bytes());
                let value = match slice.get_mapped_range() {
                    Ok(view) => Ok(read(&view)),
                    Err(e) => Err(Error::Readback(e.to_string())),
                };
                let _ = crate::gpu::scoped(&self.device, "unmapping", || self.buffer.unmap());
                value
            }
            MapState::Done(Err(_)) if crate::gpu::device_lost(&self.device) => {
                Err(Error::DeviceLost)
            }
            MapState::Done(Err(e)) => Err(Error::Readback(e.clone())),
            _ => return None,
        };
        *state = MapState::Idle;
        Some(result)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut state = self.state.lock().expect("readback state");
        match &*state {
            // Never mapped: the copy may still run at the submit; the buffer is free.
            MapState::Recorded => *state = MapState::Idle,
            MapState::Done(Ok(())) => {
                self.buffer.unmap();
                *state = MapState::Idle;
            }
            MapState::Done(Err(_)) => *state = MapState::Idle,
            // Requested: the session frees it when the callback has run.
            MapState::Idle | MapState::Requested => {}
        }
    }
}
