//! An app that renders and generates text on one GPU: each frame draws an
//! animated background and the text so far in its own render pass, records
//! as many greedy decode steps as its time budget allows into the same
//! encoder ([`kvgpu::FrameBudget`], [`kvgpu::Session::encode_greedy`]),
//! submits once, and polls the result on later frames without waiting.
//!
//! ```text
//! cargo run --release --example render_loop -- --frame-budget-ms 8
//! cargo run --release --example render_loop -- --headless --frames 240 --screenshot frame.png
//! ```
//!
//! It opens a window (winit), or renders offscreen with `--headless`
//! (waiting for each frame's GPU work, as a present would). The first half
//! of the frames decode, showing the text from the first frame on; the
//! second half render alone, the baseline. It prints the frame time's
//! p50/p99 with and without decoding, and the decode rate. stories260K comes from
//! `$KVGPU_MODELS` or the user cache folder.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kvgpu::tokenizer::{TextStream, BOS};
use kvgpu::{wgpu, FrameBudget, GpuModel, Output, Pending, Session, Tokenizer};

const WIDTH: u32 = 768;
const HEIGHT: u32 = 256;
/// Glyphs are 8x8 pixels: 96 columns.
const COLUMNS: usize = WIDTH as usize / 8;
/// Lines are a glyph and a 4-pixel gap apart: 21 rows.
const LINE_HEIGHT: usize = 12;
const ROWS: usize = HEIGHT as usize / LINE_HEIGHT;

struct Args {
    headless: bool,
    frames: usize,
    budget: Duration,
    screenshot: Option<PathBuf>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        headless: false,
        frames: 240,
        budget: Duration::from_millis(8),
        screenshot: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--headless" => args.headless = true,
            "--frames" => args.frames = value()?.parse().map_err(|e| format!("--frames: {e}"))?,
            "--frame-budget-ms" => {
                let ms: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--frame-budget-ms: {e}"))?;
                args.budget = Duration::from_secs_f64(ms / 1e3);
            }
            "--screenshot" => args.screenshot = Some(value()?.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

const SHADER: &str = "
struct Frame { time: f32, pad0: f32, pad1: f32, pad2: f32 }
@group(0) @binding(0) var<uniform> frame: Frame;
@group(0) @binding(1) var text: texture_2d<f32>;

@vertex fn vs(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    let x = f32(i32(i & 1u) * 4 - 1);
    let y = f32(i32(i >> 1u) * 4 - 1);
    return vec4<f32>(x, y, 0.0, 1.0);
}

@fragment fn fs(@builtin(position) p: vec4<f32>) -> @location(0) vec4<f32> {
    let uv = p.xy / vec2<f32>(768.0, 256.0);
    let t = frame.time;
    let bg = vec3<f32>(
        0.15 + 0.1 * sin(t + uv.x * 6.0),
        0.10 + 0.1 * sin(t * 1.3 + uv.y * 5.0),
        0.30 + 0.1 * sin(t * 0.7 + (uv.x + uv.y) * 4.0),
    );
    let ink = textureLoad(text, vec2<i32>(p.xy), 0).r;
    return vec4<f32>(mix(bg, vec3<f32>(1.0, 1.0, 0.9), ink), 1.0);
}
";

/// A WIDTH x HEIGHT 2-D texture.
fn texture(
    device: &wgpu::Device,
    label: &str,
    format: wgpu::TextureFormat,
    usage: wgpu::TextureUsages,
) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d {
            width: WIDTH,
            height: HEIGHT,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage,
        view_formats: &[],
    })
}

/// The app's renderer: a full-screen pass over an animated background and
/// the text, rasterised on the host with an 8x8 bitmap font.
struct Renderer {
    pipeline: wgpu::RenderPipeline,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    text: wgpu::Texture,
}

impl Renderer {
    fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("app"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("app"),
            layout: None,
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(format.into())],
            }),
            primitive: Default::default(),
            depth_stencil: None,
            multisample: Default::default(),
            multiview_mask: None,
            cache: None,
        });
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("frame"),
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let text = texture(
            device,
            "text",
            wgpu::TextureFormat::R8Unorm,
            wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        );
        let view = text.create_view(&Default::default());
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("app"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&view),
                },
            ],
        });
        Self {
            pipeline,
            bind_group,
            uniform,
            text,
        }
    }

    /// Rasterises the last [`ROWS`] lines of `text`, wrapped at word
    /// boundaries to [`COLUMNS`].
    fn set_text(&self, queue: &wgpu::Queue, text: &str) {
        use font8x8::UnicodeFonts;
        let lines = wrap(text, COLUMNS);
        let first = lines.len().saturating_sub(ROWS);
        let mut pixels = vec![0u8; (WIDTH * HEIGHT) as usize];
        for (row, line) in lines[first..].iter().enumerate() {
            for (col, c) in line.chars().enumerate() {
                let glyph = font8x8::BASIC_FONTS.get(c).unwrap_or([0; 8]);
                for (y, bits) in glyph.iter().enumerate() {
                    for x in 0..8 {
                        if bits >> x & 1 == 1 {
                            pixels[(row * LINE_HEIGHT + y) * WIDTH as usize + col * 8 + x] = 255;
                        }
                    }
                }
            }
        }
        queue.write_texture(
            self.text.as_image_copy(),
            &pixels,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(WIDTH),
                rows_per_image: Some(HEIGHT),
            },
            self.text.size(),
        );
    }

    /// Records the frame at `time` seconds into `encoder`, drawing into `view`.
    fn draw(
        &self,
        queue: &wgpu::Queue,
        encoder: &mut wgpu::CommandEncoder,
        view: &wgpu::TextureView,
        time: f32,
    ) {
        queue.write_buffer(
            &self.uniform,
            0,
            bytemuck::cast_slice(&[time, 0.0, 0.0, 0.0]),
        );
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("app frame"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                    store: wgpu::StoreOp::Store,
                },
            })],
            ..Default::default()
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.draw(0..3, 0..1);
    }
}

/// The text being generated, a block at a time, within the frame budget.
struct Decoding {
    session: Session,
    tokenizer: Tokenizer,
    budget: FrameBudget,
    /// The block in flight: its result, when it was submitted, its steps.
    pending: Option<(Pending, Instant, usize)>,
    token: u32,
    stream: TextStream,
    text: String,
    generated: usize,
    done: bool,
}

impl Decoding {
    /// Records this frame's steps into `encoder`, unless a block is in flight.
    fn record(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        budget: Duration,
    ) -> kvgpu::Result<()> {
        if self.done || self.pending.is_some() {
            return Ok(());
        }
        let room = self.session.cache().capacity() - self.session.len();
        let steps = self
            .budget
            .steps(budget, kvgpu::PASSES_PER_SUBMIT)
            .min(room);
        if steps > 0 {
            let pending = self.session.encode_greedy(encoder, self.token, steps)?;
            self.pending = Some((pending, Instant::now(), steps));
        }
        Ok(())
    }

    /// Polls the block in flight (never waits); true when the text changed.
    fn poll(&mut self) -> kvgpu::Result<bool> {
        let Some((pending, submitted, steps)) = &mut self.pending else {
            return Ok(false);
        };
        let Some(result) = pending.poll() else {
            return Ok(false);
        };
        self.budget.record(*steps, submitted.elapsed());
        let Output::Tokens(tokens) = result? else {
            unreachable!("a greedy block reads back tokens")
        };
        self.pending = None;
        for next in tokens {
            if next == BOS || self.session.len() == self.session.cache().capacity() {
                self.done = true;
                break;
            }
            let piece = self.tokenizer.decode(self.token, next)?;
            self.text += &self.stream.push(piece);
            self.token = next;
            self.generated += 1;
        }
        Ok(true)
    }
}

fn percentile(times: &mut [f64], p: f64) -> f64 {
    times.sort_by(f64::total_cmp);
    times[((times.len() - 1) as f64 * p).round() as usize]
}

/// Everything a frame needs: the app's renderer, the decoding, the clock
/// `text`'s lines of at most `columns` characters, broken after the last
/// space that fits (a word longer than a line is cut at its end).
fn wrap(text: &str, columns: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let mut word: Vec<char> = word.chars().collect();
            let len = line.chars().count();
            if len > 0 && len + 1 + word.len() > columns {
                lines.push(std::mem::take(&mut line));
            } else if len > 0 {
                line.push(' ');
            }
            while word.len() > columns {
                lines.push(word.drain(..columns).collect());
            }
            line.extend(word);
        }
        lines.push(line);
    }
    lines
}

/// and the frame times, without and with decoding.
struct Scene {
    device: wgpu::Device,
    queue: wgpu::Queue,
    renderer: Renderer,
    decoding: Decoding,
    budget: Duration,
    frames: usize,
    started: Instant,
    frame: usize,
    without: Vec<f64>,
    with: Vec<f64>,
    decode_time: Duration,
}

impl Scene {
    /// Loads stories260K onto the app's `device` (shared with kvgpu).
    fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        format: wgpu::TextureFormat,
        args: &Args,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let gpu = kvgpu::Gpu::from_device(device.clone(), queue.clone());
        let model = kvgpu::Model::load_llama2c(kvgpu::files::find("stories260K.bin")?)?;
        let vocab = model.config.vocab_size;
        let tokenizer = Tokenizer::load(kvgpu::files::find("tok512.bin")?, vocab)?;
        let model = GpuModel::new(&gpu, &model)?;
        // One step at load time, then rolled back: drivers that finish
        // compiling a pipeline at its first launch (lavapipe) do it here,
        // not inside a frame, and the frame budget's step cost is not
        // measured on that first launch.
        let mut session = Session::new(&model, Some(256))?;
        session.forward_greedy(BOS)?;
        session.reset();
        let renderer = Renderer::new(device, format);
        renderer.set_text(queue, "");
        Ok(Self {
            device: device.clone(),
            queue: queue.clone(),
            renderer,
            decoding: Decoding {
                session,
                tokenizer,
                budget: FrameBudget::new(),
                pending: None,
                token: BOS,
                stream: TextStream::new(),
                text: String::new(),
                generated: 0,
                done: false,
            },
            budget: args.budget,
            frames: args.frames,
            started: Instant::now(),
            frame: 0,
            without: Vec::new(),
            with: Vec::new(),
            decode_time: Duration::ZERO,
        })
    }

    /// The first half of the frames decode; the second half are the
    /// baseline.
    fn decoding(&self) -> bool {
        self.frame < self.frames.div_ceil(2)
    }

    /// Records and submits one frame into `view`: the app's pass, then the
    /// decode steps the budget allows. Returns when it was begun.
    fn submit(&mut self, view: &wgpu::TextureView) -> kvgpu::Result<Instant> {
        let begun = Instant::now();
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let time = self.started.elapsed().as_secs_f32();
        self.renderer.draw(&self.queue, &mut encoder, view, time);
        if self.decoding() {
            self.decoding.record(&mut encoder, self.budget)?;
        }
        self.queue.submit([encoder.finish()]);
        Ok(begun)
    }

    /// After the frame is shown: polls the decode (never waits) and counts
    /// the frame's time. False once every frame has run.
    fn finish(&mut self, begun: Instant) -> kvgpu::Result<bool> {
        let decode = self.decoding();
        if decode && self.decoding.poll()? {
            self.renderer.set_text(&self.queue, &self.decoding.text);
        }
        let elapsed = begun.elapsed();
        if decode {
            self.decode_time += elapsed;
            self.with.push(elapsed.as_secs_f64() * 1e3);
        } else {
            self.without.push(elapsed.as_secs_f64() * 1e3);
        }
        self.frame += 1;
        Ok(self.frame < self.frames)
    }

    /// Draws the scene as it stands offscreen (RGBA8) and saves it as PNG.
    fn screenshot(&mut self, path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
        let target = texture(
            &self.device,
            "screenshot",
            wgpu::TextureFormat::Rgba8Unorm,
            wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        );
        let renderer = Renderer::new(&self.device, wgpu::TextureFormat::Rgba8Unorm);
        renderer.set_text(&self.queue, &self.decoding.text);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let view = target.create_view(&Default::default());
        let time = self.started.elapsed().as_secs_f32();
        renderer.draw(&self.queue, &mut encoder, &view, time);
        self.queue.submit([encoder.finish()]);
        save_png(&self.device, &self.queue, &target, path)
    }

    fn report(&mut self, adapter: &str) {
        let (w50, w99) = (
            percentile(&mut self.without, 0.5),
            percentile(&mut self.without, 0.99),
        );
        let (d50, d99) = (
            percentile(&mut self.with, 0.5),
            percentile(&mut self.with, 0.99),
        );
        println!("{}", self.decoding.text);
        eprintln!(
            "adapter: {adapter} | frames: {} without decoding, {} with | frame time p50/p99: {w50:.2}/{w99:.2} ms without, {d50:.2}/{d99:.2} ms with (budget {:.1} ms) | {} tokens, {:.1} tok/s | step cost {:.2} ms",
            self.without.len(),
            self.with.len(),
            self.budget.as_secs_f64() * 1e3,
            self.decoding.generated,
            self.decoding.generated as f64 / self.decode_time.as_secs_f64(),
            self.decoding.budget.per_step().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    match args.headless {
        true => headless(&args),
        false => windowed(&args),
    }
}

/// Renders offscreen, waiting for each frame's GPU work as a present would.
fn headless(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;
    let format = wgpu::TextureFormat::Rgba8Unorm;
    let mut scene = Scene::new(&device, &queue, format, args)?;
    let target = texture(
        &device,
        "frame",
        format,
        wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
    );
    let view = target.create_view(&Default::default());
    loop {
        let begun = scene.submit(&view)?;
        device.poll(wgpu::PollType::wait_indefinitely())?;
        if !scene.finish(begun)? {
            break;
        }
    }
    let info = adapter.get_info();
    scene.report(&format!("{} ({:?})", info.name, info.backend));
    if let Some(path) = &args.screenshot {
        scene.screenshot(path)?;
        eprintln!("screenshot: {}", path.display());
    }
    Ok(())
}

/// Writes `texture` (RGBA8, WIDTH x HEIGHT) to `path` as PNG.
fn save_png(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    texture: &wgpu::Texture,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("screenshot"),
        size: (WIDTH * HEIGHT * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        texture.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &readback,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(WIDTH * 4),
                rows_per_image: Some(HEIGHT),
            },
        },
        texture.size(),
    );
    queue.submit([encoder.finish()]);
    readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let pixels = readback.slice(..).get_mapped_range()?.to_vec();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = std::io::BufWriter::new(file);
    let mut png = png::Encoder::new(file, WIDTH, HEIGHT);
    png.set_color(png::ColorType::Rgba);
    png.set_depth(png::BitDepth::Eight);
    png.write_header()?.write_image_data(&pixels)?;
    Ok(())
}

/// Renders into a window, one frame per redraw, presented as the surface paces it.
fn windowed(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use std::sync::Arc;
    use winit::application::ApplicationHandler;
    use winit::event::WindowEvent;
    use winit::event_loop::{ActiveEventLoop, EventLoop};
    use winit::window::{Window, WindowId};

    struct Shown {
        window: Arc<Window>,
        surface: wgpu::Surface<'static>,
        scene: Scene,
        adapter: String,
    }

    struct App<'a> {
        args: &'a Args,
        shown: Option<Shown>,
        error: Option<Box<dyn std::error::Error>>,
    }

    impl App<'_> {
        fn open(&self, el: &ActiveEventLoop) -> Result<Shown, Box<dyn std::error::Error>> {
            let attributes = Window::default_attributes()
                .with_title("kvgpu render loop")
                .with_inner_size(winit::dpi::PhysicalSize::new(WIDTH, HEIGHT))
                .with_resizable(false);
            let window = Arc::new(el.create_window(attributes).map_err(|e| {
                format!("cannot open a window ({e}): pass --headless to render offscreen")
            })?);
            let display = Box::new(el.owned_display_handle());
            let instance = wgpu::Instance::new(
                wgpu::InstanceDescriptor::new_with_display_handle_from_env(display),
            );
            let surface = instance.create_surface(window.clone())?;
            let adapter =
                pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                    compatible_surface: Some(&surface),
                    ..Default::default()
                }))?;
            let (device, queue) =
                pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                    required_limits: adapter.limits(),
                    ..Default::default()
                }))?;
            let mut config = surface
                .get_default_config(&adapter, WIDTH, HEIGHT)
                .ok_or("the surface does not fit this adapter")?;
            config.format = config.format.remove_srgb_suffix();
            surface.configure(&device, &config);
            let scene = Scene::new(&device, &queue, config.format, self.args)?;
            let info = adapter.get_info();
            Ok(Shown {
                window,
                surface,
                scene,
                adapter: format!("{} ({:?})", info.name, info.backend),
            })
        }

        fn redraw(shown: &mut Shown) -> Result<bool, Box<dyn std::error::Error>> {
            let frame = match shown.surface.get_current_texture() {
                wgpu::CurrentSurfaceTexture::Success(f)
                | wgpu::CurrentSurfaceTexture::Suboptimal(f) => f,
                other => return Err(format!("no frame to draw into: {other:?}").into()),
            };
            let view = frame.texture.create_view(&Default::default());
            let begun = shown.scene.submit(&view)?;
            shown.window.pre_present_notify();
            shown.scene.queue.present(frame);
            Ok(shown.scene.finish(begun)?)
        }
    }

    impl ApplicationHandler for App<'_> {
        fn resumed(&mut self, el: &ActiveEventLoop) {
            if self.shown.is_none() {
                match self.open(el) {
                    Ok(shown) => {
                        shown.window.request_redraw();
                        self.shown = Some(shown);
                    }
                    Err(e) => {
                        self.error = Some(e);
                        el.exit();
                    }
                }
            }
        }

        fn window_event(&mut self, el: &ActiveEventLoop, _: WindowId, event: WindowEvent) {
            let Some(shown) = &mut self.shown else {
                return;
            };
            match event {
                WindowEvent::CloseRequested => el.exit(),
                WindowEvent::RedrawRequested => match App::redraw(shown) {
                    Ok(true) => shown.window.request_redraw(),
                    Ok(false) => el.exit(),
                    Err(e) => {
                        self.error = Some(e);
                        el.exit();
                    }
                },
                _ => {}
            }
        }
    }

    let event_loop = EventLoop::new().map_err(|e| {
        format!("cannot open a window ({e}): no display? pass --headless to render offscreen")
    })?;
    let mut app = App {
        args,
        shown: None,
        error: None,
    };
    event_loop.run_app(&mut app)?;
    if let Some(e) = app.error {
        return Err(e);
    }
    if let Some(shown) = &mut app.shown {
        let adapter = shown.adapter.clone();
        shown.scene.report(&adapter);
        if let Some(path) = &args.screenshot {
            shown.scene.screenshot(path)?;
            eprintln!("screenshot: {}", path.display());
        }
    }
    Ok(())
}
