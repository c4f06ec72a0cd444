//! The `cuda` device: the nvcc fatbins embedded by build.rs, loaded and launched through
//! cudarc's driver API, with cuBLAS SGEMM when libcublas loads and works. cudarc loads libcuda
//! (and cuBLAS, cuDNN) at run time and PANICS on first use when a library is missing, so every
//! entry point probes `is_culib_present` first and runs cudarc calls under `catch_unwind`: a
//! machine without a GPU gets an error (or `--device auto` falls back to cpu), never a panic.
//!
//! Libraries: cudarc (feature cuda-13000) tries libcublas.so.13 and .12 and libcudnn.so.9 on
//! the loader path. When they are not there, [`preload_python_libraries`] looks in Python's
//! `nvidia` packages (pip's nvidia-cublas, nvidia-cudnn-cu13/cu12, where PyTorch keeps them)
//! and loads them by full path first, so cudarc's load by name finds them by soname. A cuBLAS
//! that does not load, or loads but fails a tiny SGEMM when the device opens, or fails later,
//! gives a warning and our sgemm kernels, never a lost device.
//!
//! Checks when the device opens: the driver's CUDA version against the nvcc that built the
//! kernels, the GPU's compute capability against the cubins in the fatbins (build.rs
//! CUDA_ARCHS), each with a message naming what to install.
//!
//! Errors: CUDA reports a failed kernel asynchronously, at a later unrelated call, and the
//! error is sticky. Every error message of this device therefore names the last launched
//! kernel with its grid and argument shapes; `SER_CUDA_SYNC=1` synchronizes after every launch
//! so the failing kernel itself is named.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr};

use super::{
    kernels, ArgPack, DeviceBuffer, DeviceSlice, DeviceSliceMut, Dim3, Elem, KernelArg, Mem,
    Transpose,
};

/// Runs `f`, turning a cudarc panic (missing library symbol) into an error naming `what`.
pub(crate) fn guarded<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            bail!("{what}: the CUDA library panicked: {msg}")
        }
    }
}

/// Folders of Python's `nvidia` namespace package (pip's nvidia-cublas, nvidia-cudnn-*):
/// `SER_CUDA_PYTHON_NVIDIA` (colon-separated), the usual system site-packages, and what
/// `python3 -c 'import nvidia'` reports (a virtual environment such as PyTorch's). Looked up
/// once.
pub fn python_nvidia_dirs() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(v) = std::env::var_os("SER_CUDA_PYTHON_NVIDIA") {
            dirs.extend(std::env::split_paths(&v));
        }
        for base in ["/usr/lib", "/usr/local/lib"] {
            if let Ok(rd) = std::fs::read_dir(base) {
                let mut py: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
                    })
                    .collect();
                py.sort();
                for p in py {
                    for sub in ["site-packages/nvidia", "dist-packages/nvidia"] {
                        dirs.push(p.join(sub));
                    }
                }
            }
        }
        // a venv's python3 (PyTorch's on the lent GPU machines); only `nvidia`, not torch, is
        // imported, which takes milliseconds
        if let Ok(o) = std::process::Command::new("python3")
            .args([
                "-c",
                "import nvidia, sys; sys.stdout.write(chr(10).join(nvidia.__path__))",
            ])
            .stderr(std::process::Stdio::null())
            .output()
        {
            if o.status.success() {
                dirs.extend(
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(PathBuf::from),
                );
            }
        }
        let mut seen = Vec::new();
        dirs.retain(|d| {
            let keep = d.is_dir() && !seen.contains(d);
            seen.push(d.clone());
            keep
        });
        dirs
    })
}

/// Where a library of this process was loaded from (its first mapping in /proc/self/maps).
fn loaded_path(stem: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with(&format!("{stem}.so")))
        })
        .map(str::to_string)
}

/// One library the device uses: where it was found, or why not.
#[derive(Clone, Debug)]
pub struct LibraryLookup {
    pub found: bool,
    /// e.g. "libcublas.so.13 on the loader path" or "… from Python's nvidia package in DIR".
    pub note: String,
}

/// Loads `files` (in order) from `package/lib` of a Python nvidia folder by full path, with
/// RTLD_GLOBAL, when `present()` says the loader path does not have the library. Returns the
/// folder used.
fn preload_from_python(
    package: &str,
    files: &[&str],
    present: &dyn Fn() -> bool,
) -> Option<PathBuf> {
    for d in python_nvidia_dirs() {
        let lib = d.join(package).join("lib");
        let main = files.last().map(|f| lib.join(f));
        if !main.as_ref().is_some_and(|m| m.is_file()) {
            continue;
        }
        for f in files {
            let p = lib.join(f);
            if !p.is_file() {
                continue;
            }
            // SAFETY: loading NVIDIA's own libraries runs only their initialisers; the handle
            // is kept for the life of the process (leaked), as cudarc keeps its own.
            let r = unsafe {
                libloading::os::unix::Library::open(
                    Some(&p),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            };
            match r {
                Ok(l) => std::mem::forget(l),
                Err(e) => {
                    eprintln!("warning: loading {}: {e}", p.display());
                    break;
                }
            }
        }
        if present() {
            return Some(lib);
        }
    }
    None
}

/// cuBLAS and cuDNN: found on the loader path, else loaded from Python's nvidia packages
/// (once per process, before cudarc first loads them by name).
pub fn preload_python_libraries() -> &'static (LibraryLookup, LibraryLookup) {
    static DONE: OnceLock<(LibraryLookup, LibraryLookup)> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: these only try to dlopen the libraries by name.
        let cublas_present = || unsafe { cudarc::cublas::sys::is_culib_present() };
        let cudnn_present = || unsafe { cudarc::cudnn::sys::is_culib_present() };
        let on_path = |stem: &str| {
            format!(
                "{} on the loader path",
                loaded_path(stem).unwrap_or_else(|| stem.to_string())
            )
        };
        let cublas = if cublas_present() {
            LibraryLookup {
                found: true,
                note: on_path("libcublas"),
            }
        } else {
            let mut hit = None;
            for major in ["13", "12"] {
                let files = [
                    format!("libcublasLt.so.{major}"),
 format!("libcublas.so.{major}"),
                ];
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                if let Some(d) = preload_from_python("cublas", &files, &cublas_present) {
                    hit = Some(format!(
                        "libcublas.so.{major} from Python's nvidia package in {}",
                        d.display()
                    ));
                    break;
                }
            }
            match hit {
                Some(note) => LibraryLookup { found: true, note },
                None => LibraryLookup {
                    found: false,
                    note: "libcublas.so.13/.12 not found on the loader path nor in Python's nvidia packages (pip install nvidia-cublas)"
                        .into(),
                },
            }
        };
        let cudnn = if cudnn_present() {
            LibraryLookup {
                found: true,
                note: on_path("libcudnn"),
            }
        } else {
            let files = ["libcudnn_graph.so.9", "libcudnn.so.9"];
            let mut hit = None;
            for pkg in ["cudnn"] {
                if let Some(d) = preload_from_python(pkg, &files, &cudnn_present) {
                    hit = Some(format!(
                        "libcudnn.so.9 from Python's nvidia package in {}",
                        d.display()
                    ));
                }
            }
            match hit {
                Some(note) => LibraryLookup { found: true, note },
                None => LibraryLookup {
                    found: false,
                    note: "libcudnn.so.9 not found on the loader path nor in Python's nvidia packages (pip install nvidia-cudnn-cu13 or -cu12)"
                        .into(),
                },
            }
        };
        (cublas, cudnn)
    })
}

/// Whether libcuda, libcublas and libcudnn can be loaded (cuBLAS and cuDNN also from Python's
/// nvidia packages).
pub fn libraries_present() -> (bool, bool, bool) {
    // SAFETY: this only tries to dlopen the library by name.
    let cuda = unsafe { cudarc::driver::sys::is_culib_present() };
    let (cublas, cudnn) = preload_python_libraries();
    (cuda, cublas.found, cudnn.found)
}

/// The CUDA version the driver supports, as (major, minor).
pub fn driver_cuda_version() -> Result<(u32, u32)> {
    guarded("cuDriverGetVersion", || {
        let mut v: std::ffi::c_int = 0;
        // SAFETY: writes one int.
        let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            bail!("cuDriverGetVersion failed: {r:?}");
        }
        Ok(((v / 1000) as u32, ((v % 1000) / 10) as u32))
    })
}

/// Whether the driver can run kernels built by the toolkit `built` (major.minor): cubins and
/// PTX of a CUDA major version need a driver of that major version or newer (minor-version
/// compatibility within a major version).
pub fn driver_fits(driver: (u32, u32), built: (u32, u32)) -> Result<(), String> {
    if driver.0 >= built.0 {
        return Ok(());
    }
    let branch = match built.0 {
        13 => " (R580 or newer)",
        12 => " (R525 or newer)",
        _ => "",
    };
    Err(format!(
        "the NVIDIA driver supports CUDA {}.{}, but the kernels were built by nvcc {}.{} and need a driver for CUDA {}.0 or newer{branch}. Fix: install a newer NVIDIA driver, or rebuild the kernels with an nvcc of CUDA {}.x (NVCC=/path/to/nvcc cargo build --release)",
        driver.0, driver.1, built.0, built.1, built.0, driver.0
    ))
}

/// Which image of the fatbins a GPU of compute capability `cc` runs: the cubin of its major
/// version with the highest minor not above its own, else the PTX when the GPU is newer than
/// every cubin; an error for older GPUs.
pub fn kernel_image_for(cc: (i32, i32), archs: &[u32]) -> Result<String, String> {
    let v = (cc.0 * 10 + cc.1) as u32;
    if let Some(a) = archs
        .iter()
        .filter(|&&a| a / 10 == cc.0 as u32 && a <= v)
        .max()
    {
        return Ok(format!("sm_{a} cubin"));
    }
    let newest = *archs.iter().max().unwrap_or(&0);
    if v > newest {
        return Ok(format!("compute_{newest} PTX, JIT-compiled by the driver"));
    }
    let list: Vec<String> = archs.iter().map(|a| format!("sm_{a}")).collect();
    Err(format!(
        "this GPU is sm_{}{}; the kernels hold cubins for {} and PTX for newer GPUs, so GPUs older than sm_{} are not supported. Fix: use a Turing (sm_75) or newer GPU, or --device cpu",
        cc.0,
        cc.1,
        list.join(", "),
        archs.iter().min().unwrap_or(&0)
    ))
}

/// Whether `SER_CUDA_SYNC` asks for a synchronize after every launch.
fn sync_every_launch() -> bool {
    static SYNC: OnceLock<bool> = OnceLock::new();
    *SYNC.get_or_init(|| std::env::var("SER_CUDA_SYNC").is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// The shape of one argument of the last launch (kept to name it in later errors).
#[derive(Clone, Copy, Debug)]
enum ArgShape {
    Buf(usize),
    Int(i128),
    Float(f32),
}

/// The last launch of a device: kernel, grid, block, shared bytes, argument shapes.
#[derive(Default)]
struct LastLaunch {
    idx: Option<usize>,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared: u32,
    args: Vec<ArgShape>,
}

impl LastLaunch {
    fn describe(&self) -> String {
        let Some(idx) = self.idx else {
            return "no kernel launched yet".into();
        };
        let sig = &kernels::KERNELS[idx];
        let args: Vec<String> = sig
            .params
            .iter()
            .zip(&self.args)
            .map(|(p, a)| match a {
                ArgShape::Buf(n) => format!("{}[{n}]", p.name),
                ArgShape::Int(v) => format!("{}={v}", p.name),
                ArgShape::Float(v) => format!("{}={v}", p.name),
            })
            .collect();
        format!(
            "kernel '{}' (kernels/{}) grid {:?} block {:?} shared {} B, args ({})",
            sig.name,
            sig.file,
            self.grid,
            self.block,
            self.shared,
            args.join(", ")
        )
    }
}

/// How GEMMs run on this device and why.
#[derive(Clone, Debug)]
pub enum GemmPath {
    Cublas(String),
    Fallback(String),
}

/// An NVIDIA GPU with the project's kernels loaded.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<&'static str, CudaFunction>,
    blas: Option<cudarc::cublas::CudaBlas>,
    /// Set when cuBLAS failed after the device opened: GEMMs use our kernels from then on.
    blas_failed: AtomicBool,
    gemm_path: Box<GemmPath>,
    name: String,
    cc: (i32, i32),
    driver: (u32, u32),
    image: String,
    // boxed: keeps `Device` small (clippy::large_enum_variant)
    last: Box<Mutex<LastLaunch>>,
}

impl CudaDevice {
    /// Opens GPU `ordinal` and loads every kernel, after checking the driver's CUDA version
    /// and the GPU's compute capability against the kernels. Errors name what is missing and
    /// what to install.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !kernels::KERNELS_COMPILED {
            bail!("{}", kernels::NVCC_STATUS);
        }
        let (cuda, cublas, _) = libraries_present();
        if !cuda {
            bail!("the CUDA driver library (libcuda) is not installed or not on the loader path: no NVIDIA driver on this machine");
        }
        let driver = driver_cuda_version()?;
        if let Some(built) = kernels::KERNELS_CUDA_VERSION {
            driver_fits(driver, built).map_err(|e| anyhow!(e))?;
        }
        guarded("opening the GPU", || {
            let count =
                CudaContext::device_count().map_err(|e| anyhow!("cuDeviceGetCount failed: {e}"))?;
            if ordinal as i32 >= count {
                bail!("no CUDA GPU with ordinal {ordinal} (the driver reports {count})");
            }
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| anyhow!("creating a CUDA context on GPU {ordinal}: {e}"))?;
            // One stream for everything: cudarc's cross-stream event tracking is not needed.
            // SAFETY: no other stream uses these allocations.
            unsafe { ctx.disable_event_tracking() };
            let stream = ctx.default_stream();
            let name = ctx.name().map_err(|e| anyhow!("cuDeviceGetName: {e}"))?;
            let cc = ctx
                .compute_capability()
                .map_err(|e| anyhow!("compute capability: {e}"))?;
            let image =
                kernel_image_for(cc, kernels::CUDA_ARCHS).map_err(|e| anyhow!("{name}: {e}"))?;
            let mut funcs = HashMap::new();
            for (file, image_bytes) in kernels::FATBINS {
                let module = ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(image_bytes.to_vec()))
                    .map_err(|e| {
                        anyhow!(
                            "loading kernels/{file} on {name} (sm_{}{}, {image}, driver for CUDA {}.{}): {e}. \
 A PTX or binary-image error means the driver is older than the nvcc that built the kernels ({}): install a newer driver",
                            cc.0,
                            cc.1,
                            driver.0,
                            driver.1,
                            kernels::NVCC_STATUS
                        )
                    })?;
                for k in kernels::KERNELS.iter().filter(|k| k.file == *file) {
                    let f = module
                        .load_function(k.name)
                        .map_err(|e| anyhow!("kernel '{}' in kernels/{file}: {e}", k.name))?;
                    funcs.insert(k.name, f);
                }
            }
            let (blas, gemm_path) = open_cublas(&stream, cublas);
            if let GemmPath::Fallback(why) = &gemm_path {
                if cublas {
                    eprintln!("warning: {why}; GEMMs use our sgemm kernels");
                }
            }
            Ok(CudaDevice {
                ctx,
                stream,
                funcs,
                blas,
                blas_failed: AtomicBool::new(false),
                gemm_path: Box::new(gemm_path),
                name,
                cc,
                driver,
                image,
                last: Box::new(Mutex::new(LastLaunch::default())),
            })
        })
    }

    pub fn describe(&self) -> String {
        let mem = self
            .ctx
            .total_mem()
            .map(|b| format!(", {:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_default();
        format!(
            "cuda: {} (sm_{}{}{mem}, kernels: {}, driver for CUDA {}.{}), GEMM by {}, convolution by {}",
            self.name,
            self.cc.0,
            self.cc.1,
            self.image,
            self.driver.0,
            self.driver.1,
            self.gemm_description(),
            cudnn_status().1
        )
    }

    /// Which GEMM path runs and why.
    pub fn gemm_description(&self) -> String {
        match (&*self.gemm_path, self.blas_failed.load(Ordering::Relaxed)) {
            (GemmPath::Cublas(_), true) => {
                "our sgemm kernels (cuBLAS failed during the run; see the warning)".into()
            }
            (GemmPath::Cublas(v), false) => v.clone(),
            (GemmPath::Fallback(why), _) => format!("our sgemm kernels ({why})"),
        }
    }

    /// The last launched kernel, its grid and arguments: what a sticky error most likely
    /// comes from.
    pub fn last_launch(&self) -> String {
        self.last
            .lock()
            .map(|l| l.describe())
            .unwrap_or_else(|_| "unknown (lock poisoned)".into())
    }

    /// An error of a CUDA call, with the last launched kernel (CUDA errors are asynchronous
    /// and sticky: a failed kernel surfaces at a later call).
    fn cuda_err(&self, what: String, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow!(
            "{what}: {e} (last launched: {}; SER_CUDA_SYNC=1 synchronizes after every launch to name the failing kernel)",
            self.last_launch()
        )
    }

    /// Whether GEMMs go to cuBLAS (it loaded, passed its check and has not failed since).
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some() && !self.blas_failed.load(Ordering::Relaxed)
    }

    /// A cuBLAS call failed: warn once and use our kernels from now on.
    pub(crate) fn cublas_failed(&self, e: &anyhow::Error) {
        if !self.blas_failed.swap(true, Ordering::Relaxed) {
            eprintln!("warning: {e:#}; GEMMs use our sgemm kernels from now on");
        }
    }

    /// The one stream every launch, copy, cuBLAS and cuDNN call of this device runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        let s = self
            .stream
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| self.cuda_err(format!("cuda: allocating {n} elements"), e))?;
        Ok(DeviceBuffer {
            len: n,
            mem: Mem::Cuda(s),
        })
    }

    pub(crate) fn alloc_uninit<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T>> {
        // SAFETY: the contents are undefined until written, but any bit pattern is a valid
        // f32/i32/u32 (Elem: Pod), so reading them early is a bug (initcheck on sim), not UB.
        let s = unsafe { self.stream.alloc::<T>(n.max(1)) }
            .map_err(|e| anyhow!("cuda: allocating {n} elements: {e}"))?;
        Ok(DeviceBuffer {
            len: n,
            mem: Mem::Cuda(s),
        })
    }

    pub(crate) fn copy_htod<T: Elem>(&self, src: &[T], dst: &mut CudaSlice<T>) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        let mut view = dst.slice_mut(..src.len());
        self.stream.memcpy_htod(src, &mut view).map_err(|e| {
            self.cuda_err(
                format!("cuda: copy of {} elements to the device", src.len()),
                e,
            )
        })
    }

    pub(crate) fn dtoh<T: Elem>(&self, src: &CudaSlice<T>, len: usize) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let v = self
            .stream
            .clone_dtoh(&src.slice(..len))
            .map_err(|e| self.cuda_err(format!("cuda: copy of {len} elements to the host"), e))?;
        // pageable copies complete before returning, but make the guarantee explicit
        self.synchronize()?;
        Ok(v)
    }

    pub(crate) fn memset_zero<T: Elem>(&self, dst: &mut CudaSlice<T>) -> Result<()> {
        self.stream
            .memset_zeros(dst)
            .map_err(|e| self.cuda_err("cuda: memset".into(), e))
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.cuda_err("cuda: synchronize".into(), e))
    }

    /// Device address of a view's first element: the allocation's address plus the offset in
    /// bytes (the view lies inside the buffer by construction).
    fn dptr<T: Elem>(&self, v: &DeviceSlice<'_, T>) -> Result<u64> {
        match &v.buffer().mem {
            Mem::Cuda(s) => {
                Ok(s.device_ptr(&self.stream).0 + (v.offset() * std::mem::size_of::<T>()) as u64)
            }
            Mem::Sim(_) => bail!("a sim buffer was passed to a cuda launch"),
        }
    }

    pub(crate) fn launch_index(
        &self,
        idx: usize,
        grid: Dim3,
        block: Dim3,
        shared: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        let name = kernels::KERNELS[idx].name;
        let f = self
            .funcs
            .get(name)
            .with_context(|| format!("kernel '{name}' not loaded"))?;
        let sig = &kernels::KERNELS[idx];
        if sig.max_dynamic_shared.is_some()
            && super::limits::needs_opt_in(sig, &format!("sm_{}{}", self.cc.0, self.cc.1), shared)
        {
            // limits::check allowed this size for a kernel that declares the opt-in
            use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            f.set_attribute(
                CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                shared as i32,
            )
            .map_err(|e| {
                anyhow!(
                    "kernel '{name}': opting in to {shared} bytes of dynamic shared memory: {e}"
                )
            })?;
        }
        let mut pack = ArgPack::new(args, &mut |a| match a {
            KernelArg::F32Buf(v) => self.dptr(v),
            KernelArg::I32Buf(v) => self.dptr(v),
            KernelArg::U32Buf(v) => self.dptr(v),
            _ => unreachable!("scalars are packed by ArgPack"),
        })?;
        if let Ok(mut l) = self.last.lock() {
            l.idx = Some(idx);
            l.grid = (grid.x, grid.y, grid.z);
            l.block = (block.x, block.y, block.z);
            l.shared = shared;
            l.args.clear();
            l.args.extend(args.iter().map(|a| match *a {
                KernelArg::F32Buf(v) => ArgShape::Buf(v.len()),
                KernelArg::I32Buf(v) => ArgShape::Buf(v.len()),
                KernelArg::U32Buf(v) => ArgShape::Buf(v.len()),
                KernelArg::I32(v) => ArgShape::Int(v as i128),
                KernelArg::U32(v) => ArgShape::Int(v as i128),
                KernelArg::U64(v) => ArgShape::Int(v as i128),
                KernelArg::F32(v) => ArgShape::Float(v),
            }));
        }
        // SAFETY: arguments checked against the kernel's signature and extents (check_launch).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (grid.x, grid.y, grid.z),
                (block.x, block.y, block.z),
                shared,
                self.stream.cu_stream(),
                pack.as_mut_ptrs(),
            )
        }
        .map_err(|e| self.cuda_err(format!("cuLaunchKernel '{name}'"), e))?;
        if sync_every_launch() {
            self.stream
                .synchronize()
                .map_err(|e| anyhow!("SER_CUDA_SYNC: {} failed: {e}", self.last_launch()))?;
        }
        Ok(())
    }

    /// Row-major GEMM through column-major cuBLAS: C^T = op(B)^T op(A)^T, i.e. swap operands.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cublas_sgemm(
        &self,
        ta: Transpose,
        tb: Transpose,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: DeviceSlice<'_, f32>,
        b: DeviceSlice<'_, f32>,
        beta: f32,
        c: DeviceSliceMut<'_, f32>,
    ) -> Result<()> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        let blas = self.blas.as_ref().context("cuBLAS not loaded")?;
        let (opb, ldb) = if tb == Transpose::N {
            (CUBLAS_OP_N, n)
        } else {
            (CUBLAS_OP_T, k)
        };
        let (opa, lda) = if ta == Transpose::N {
            (CUBLAS_OP_N, k)
        } else {
            (CUBLAS_OP_T, m)
        };
        // c is written through its view (exclusive by construction, like the kernels' outputs)
        let (pa, pb, pc) = (self.dptr(&a)?, self.dptr(&b)?, self.dptr(&c.view)?);
        // SAFETY: sizes checked by Device::gemm against the views; pointers are live device
        // allocations plus in-bounds offsets.
        unsafe {
            cudarc::cublas::result::sgemm(
                *blas.handle(),
                opb,
                opa,
                n,
                m,
                k,
                &alpha,
                pb as *const f32,
                ldb,
                pa as *const f32,
                lda,
                &beta,
                pc as *mut f32,
                n,
            )
        }
        .map_err(|e| anyhow!("cublasSgemm (m={m} n={n} k={k}): {e:?}"))
    }
}

/// Creates the cuBLAS handle and checks it with a 2×3·3×2 SGEMM against known values, so a
/// cuBLAS that loads but cannot run on this GPU gives our kernels instead of a lost device.
fn open_cublas(
    stream: &Arc<CudaStream>,
    present: bool,
) -> (Option<cudarc::cublas::CudaBlas>, GemmPath) {
    if std::env::var("SER_NO_CUBLAS").is_ok_and(|v| !v.is_empty() && v != "0") {
        return (None, GemmPath::Fallback("SER_NO_CUBLAS is set".into()));
    }
    if !present {
        return (
            None,
            GemmPath::Fallback(format!(
                "cuBLAS not found: {}",
                preload_python_libraries().0.note
            )),
        );
    }
    let r = guarded("cuBLAS", || {
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| anyhow!("cublasCreate failed: {e}"))?;
        let mut ver: std::ffi::c_int = 0;
        // SAFETY: a live handle; writes one int.
        unsafe { cudarc::cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut ver) }
            .result()
            .map_err(|e| anyhow!("cublasGetVersion failed: {e:?}"))?;
        // column-major C (2x2) = A (2x3) B (3x2): A = [1 3 5; 2 4 6], B = [1 2 3; 4 5 6]ᵀ
        let a = stream.clone_htod(&[1.0f32, 2., 3., 4., 5., 6.])?;
        let b = stream.clone_htod(&[1.0f32, 2., 3., 4., 5., 6.])?;
        let mut c = stream.alloc_zeros::<f32>(4)?;
        {
            let (pa, _ga) = a.device_ptr(stream);
            let (pb, _gb) = b.device_ptr(stream);
            let (pc, _gc) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut c, stream);
            use cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
            // SAFETY: live allocations of the sizes the call reads and writes.
            unsafe {
                cudarc::cublas::result::sgemm(
                    *blas.handle(),
                    CUBLAS_OP_N,
                    CUBLAS_OP_N,
                    2,
                    2,
                    3,
                    &1.0,
                    pa as *const f32,
                    2,
                    pb as *const f32,
                    3,
                    &0.0,
                    pc as *mut f32,
                    2,
                )
            }
            .map_err(|e| anyhow!("cublasSgemm check failed: {e:?}"))?;
        }
        let got = stream.clone_dtoh(&c)?;
        stream.synchronize()?;
        // C = A·B: [1 3 5; 2 4 6] · [1 4; 2 5; 3 6] = [22 49; 28 64], column-major
        let want = [22.0f32, 28.0, 49.0, 64.0];
        if got != want {
            bail!("cublasSgemm check computed {got:?} instead of {want:?}");
        }
        let (maj, min, patch) = (ver / 10000, (ver % 10000) / 100, ver % 100);
        Ok((
            blas,
            format!(
                "cuBLAS {maj}.{min}.{patch} ({})",
                preload_python_libraries().0.note
            ),
        ))
    });
    match r {
        Ok((blas, v)) => (Some(blas), GemmPath::Cublas(v)),
        Err(e) => (
            None,
            GemmPath::Fallback(format!("cuBLAS loaded but failed: {e:#}")),
        ),
    }
}

/// Whether `SER_NO_CUDNN` asks for our convolution kernels instead of cuDNN (set, non-empty and
/// not "0").
pub fn cudnn_disabled_by_env() -> bool {
    flag_set(std::env::var_os("SER_NO_CUDNN").as_deref())
}

fn flag_set(v: Option<&std::ffi::OsStr>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Whether the conv stages will use cuDNN on this machine (libcudnn loads and `SER_NO_CUDNN` is
/// not set), and a phrase saying by what they run.
pub fn cudnn_status() -> (bool, String) {
    if cudnn_disabled_by_env() {
        return (false, "our kernels (SER_NO_CUDNN is set)".into());
    }
    if !libraries_present().2 {
        return (
            false,
            format!("our kernels ({})", preload_python_libraries().1.note),
        );
    }
    match cudnn_version_number() {
        Ok(v) if v < CUDNN_MIN => (false, format!("our kernels ({})", cudnn_too_old(v))),
        Ok(v) => (
            true,
            format!(
                "cuDNN {} ({})",
                cudnn_version_string(v),
                preload_python_libraries().1.note
            ),
        ),
        Err(e) => (false, format!("our kernels (cuDNN did not load: {e:#})")),
    }
}

/// The oldest cuDNN the bindings (cuDNN 9's) work with.
pub const CUDNN_MIN: usize = 90000;

/// The message for a cuDNN older than 9.
pub fn cudnn_too_old(v: usize) -> String {
    format!(
        "cuDNN {} is too old: the bindings are cuDNN 9's; install cuDNN 9 (pip install nvidia-cudnn-cu13, or -cu12 with a CUDA 12 driver)",
        cudnn_version_string(v)
    )
}

fn cudnn_version_number() -> Result<usize> {
    guarded("cudnnGetVersion", || {
        Ok(cudarc::cudnn::result::get_version())
    })
}

/// The loaded cuDNN's version as `major.minor.patch` (cudnnGetVersion: major·10000 + minor·100 +
/// patch from cuDNN 9 on, major·1000 + minor·100 + patch before).
pub fn cudnn_version() -> Result<String> {
    let v = guarded("cudnnGetVersion", || {
        Ok(cudarc::cudnn::result::get_version())
    })?;
    Ok(cudnn_version_string(v))
}

fn cudnn_version_string(v: usize) -> String {
    let (major, rest) = if v >= 90000 {
        (v / 10000, v % 10000)
    } else {
        (v / 1000, v % 1000)
    };
    format!("{major}.{}.{} ({v})", rest / 100, rest % 100)
}

/// Report lines about the CUDA libraries and GPU (never panics).
pub fn probe_report() -> Vec<String> {
    let (cuda, _, cudnn) = libraries_present();
    let (cublas_lib, cudnn_lib) = preload_python_libraries();
    let mut v = vec![
        format!(
            "libcuda: {}",
            if cuda {
                loaded_path("libcuda").unwrap_or_else(|| "present".into())
            } else {
                "not found (no NVIDIA driver)".into()
            }
        ),
        format!("cuBLAS library: {}", cublas_lib.note),
        format!("cuDNN library: {}", cudnn_lib.note),
    ];
    if cudnn {
        match cudnn_version() {
            Ok(ver) => v.push(format!("cuDNN version: {ver}")),
            Err(e) => v.push(format!("cuDNN version: error: {e:#}")),
        }
    }
    v.push(format!(
        "convolution on cuda: {} (SER_NO_CUDNN=1 forces our kernels)",
        cudnn_status().1
    ));
    v.push(format!(
        "kernel images: cubins for {} + PTX; built for CUDA {}",
        kernels::CUDA_ARCHS
            .iter()
            .map(|a| format!("sm_{a}"))
            .collect::<Vec<_>>()
            .join(", "),
        kernels::KERNELS_CUDA_VERSION
            .map(|(a, b)| format!("{a}.{b}"))
            .unwrap_or_else(|| "- (not compiled)".into())
    ));
    if cuda {
        match driver_cuda_version() {
            Ok(d) => v.push(format!(
                "driver: CUDA {}.{}{}",
                d.0,
                d.1,
                match kernels::KERNELS_CUDA_VERSION.map(|b| driver_fits(d, b)) {
                    Some(Err(e)) => format!(" — {e}"),
                    _ => String::new(),
                }
            )),
            Err(e) => v.push(format!("driver: error: {e:#}")),
        }
        let gpus = guarded("probing GPUs", || {
            let n = CudaContext::device_count().map_err(|e| anyhow!("{e}"))?;
            let mut out = Vec::new();
            for i in 0..n.max(0) as usize {
                let ctx = CudaContext::new(i).map_err(|e| anyhow!("{e}"))?;
                let (ma, mi) = ctx.compute_capability().map_err(|e| anyhow!("{e}"))?;
                let mem = ctx.total_mem().map_err(|e| anyhow!("{e}"))?;
                let image = match kernel_image_for((ma, mi), kernels::CUDA_ARCHS) {
                    Ok(i) => format!("runs the {i}"),
                    Err(e) => e,
                };
                out.push(format!(
                    "gpu {i}: {} (sm_{ma}{mi}, {:.1} GiB): {image}",
                    ctx.name().map_err(|e| anyhow!("{e}"))?,
                    mem as f64 / (1u64 << 30) as f64
                ));
            }
            if out.is_empty() {
                out.push("gpu: none (driver loaded, 0 devices)".into());
            }
            Ok(out)
        });
        match gpus {
            Ok(g) => v.extend(g),
            Err(e) => v.push(format!("gpu: error: {e:#}")),
        }
        match CudaDevice::new(0) {
            Ok(d) => v.push(format!("GEMM on cuda: {}", d.gemm_description())),
            Err(e) => v.push(format!("cuda device: cannot open: {e:#}")),
        }
    } else {
        v.push("gpu: none (no NVIDIA driver)".into());
        v.push("GEMM on cuda: - (no GPU)".into());
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn ser_no_cudnn_values() {
        use super::flag_set;
        use std::ffi::OsStr;
        assert!(!flag_set(None));
        assert!(!flag_set(Some(OsStr::new(""))));
        assert!(!flag_set(Some(OsStr::new("0"))));
        assert!(flag_set(Some(OsStr::new("1"))));
        assert!(flag_set(Some(OsStr::new("yes"))));
    }

    #[test]
    fn cudnn_version_numbers_decode() {
        // cudnn_version.h: from 9.0 major*10000 + minor*100 + patch, before major*1000 + ...
        assert_eq!(super::cudnn_version_string(90100), "9.1.0 (90100)");
        assert_eq!(super::cudnn_version_string(91002), "9.10.2 (91002)");
        assert_eq!(super::cudnn_version_string(8902), "8.9.2 (8902)");
        assert!(super::cudnn_too_old(8902).contains("cuDNN 8.9.2 (8902) is too old"));
        let (old, new) = (8902usize, 90100usize);
        assert!(old < super::CUDNN_MIN && new >= super::CUDNN_MIN);
    }

    #[test]
    fn driver_and_architecture_checks() {
        use super::{driver_fits, kernel_image_for};
        let archs = [75, 80, 86, 89, 90];
        assert!(driver_fits((13, 0), (13, 0)).is_ok());
        assert!(driver_fits((13, 1), (13, 0)).is_ok());
        // minor-version compatibility: a 13.0 driver runs 13.2 cubins
        assert!(driver_fits((13, 0), (13, 2)).is_ok());
        let e = driver_fits((12, 8), (13, 0)).unwrap_err();
        assert!(e.contains("CUDA 12.8") && e.contains("R580"), "{e}");
        assert_eq!(kernel_image_for((9, 0), &archs).unwrap(), "sm_90 cubin");
        assert_eq!(kernel_image_for((8, 7), &archs).unwrap(), "sm_86 cubin");
        assert_eq!(kernel_image_for((8, 0), &archs).unwrap(), "sm_80 cubin");
        assert_eq!(kernel_image_for((7, 5), &archs).unwrap(), "sm_75 cubin");
        assert!(kernel_image_for((10, 0), &archs)
            .unwrap()
            .contains("compute_90 PTX"));
        assert!(kernel_image_for((12, 0), &archs).unwrap().contains("PTX"));
        let e = kernel_image_for((7, 0), &archs).unwrap_err();
        assert!(e.contains("sm_70") && e.contains("sm_75"), "{e}");
        assert!(kernel_image_for((6, 1), &archs).is_err());
    }
}
