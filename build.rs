//! Builds the kernels in kernels/*.cu twice:
//! - for the `sim` device, ALWAYS: g++ (cc crate, C++17) against the host shim kernels/sim/,
//!   into a static library linked into the crate, plus a generated registry that maps each
//!   kernel name to a trampoline taking cuLaunchKernel's `void** args`;
//! - for the `cuda` device, when nvcc is found (NVCC, CUDA_PATH/CUDA_HOME, PATH, then the
//!   project-local .tools/cuda from tools/install-cuda-compiler.sh): one fatbin per file with
//!   cubins for every architecture in CUDA_ARCHS (Turing to Hopper) plus compute_90 PTX (for
//!   newer GPUs, JIT by the driver; older ones all have a cubin), built with
//!   -lineinfo, warnings as errors and the ptxas resource report (OUT_DIR/ptxas-report.txt and a
//!   parsed OUT_DIR/ptxas-table.txt).
//!
//! It also parses every `extern "C" __global__` signature and its `// extent:` comment lines into
//! OUT_DIR/kernels_table.rs (names, parameter types, buffer extents, embedded fatbins), which
//! src/device/kernels.rs includes so launches are checked at run time.
//!
//! Without nvcc, the fatbins packed by tools/pack-kernels.sh into .kernels-prebuilt/ (or the
//! folder SER_PREBUILT_KERNELS names) are embedded instead, but only when its manifest's source
//! hashes match every file under kernels/ now; stale prebuilt kernels are never used. This is
//! how a GPU machine without network or CUDA toolkit gets the kernels.
//!
//! Environment: SER_NO_NVCC=1 skips nvcc (prebuilt fatbins are still used);
//! SER_PREBUILT_KERNELS=DIR reads prebuilt fatbins from DIR, =0 ignores them;
//! SER_KERNELS_STRICT=1 makes kernels that are neither compiled nor prebuilt an error.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cubins each fatbin holds (sm_XY), plus PTX of the last one. A GPU runs the cubin of its
/// own major version with the highest minor not above its own (sm_87 runs sm_86), and JITs the
/// PTX when newer than all of them. src/device/cuda.rs checks the GPU against this list.
const CUDA_ARCHS: [u32; 5] = [75, 80, 86, 89, 90];

fn arch_list() -> String {
    let mut s: Vec<String> = CUDA_ARCHS.iter().map(|a| format!("sm_{a}")).collect();
    s.push(format!("compute_{} PTX", CUDA_ARCHS[CUDA_ARCHS.len() - 1]));
    s.join(" + ")
}

/// `(major, minor)` from nvcc's `release 13.0,` or a manifest's `13.0.88`.
fn cuda_version(text: &str) -> Option<(u32, u32)> {
    let v = text
        .split("release ")
        .nth(1)
        .unwrap_or(text)
        .trim()
        .trim_start_matches('V');
    let mut it = v.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

struct Param {
    ty: String,
    name: String,
    kind: &'static str,
}

struct Kernel {
    name: String,
    file: String,
    decl_params: String,
    params: Vec<Param>,
    extents: Vec<(String, String)>,
    /// `// max-dynamic-shared: BYTES` above the kernel: it may be launched with more than
    /// 48 KiB of dynamic shared memory (the cuda device sets the opt-in attribute).
    max_dynamic_shared: Option<u32>,
}

fn param_kind(ty: &str) -> Option<&'static str> {
    let t = ty.replace("__restrict__", "").replace("const", "");
    let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(match t.as_str() {
        "float*" | "float *" => "PtrF32",
        "int*" | "int *" => "PtrI32",
        "unsigned*" | "unsigned *" | "unsigned int*" | "unsigned int *" => "PtrU32",
        "int" => "I32",
        "unsigned" | "unsigned int" => "U32",
        "float" => "F32",
        "unsigned long long" | "unsigned long long int" => "U64",
        _ => return None,
    })
}

fn parse_kernels(dir: &Path, files: &[PathBuf]) -> Vec<Kernel> {
    let mut out = Vec::new();
    for f in files {
        let src =
            std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let lines: Vec<&str> = src.lines().collect();
        let fname = f.strip_prefix(dir).unwrap().to_string_lossy().to_string();
        for (li, line) in lines.iter().enumerate() {
            let l = line.trim_start();
            if !l.starts_with("extern \"C\" __global__") {
                continue;
            }
            let open = l.find('(').unwrap_or_else(|| {
                panic!("{fname}:{}: kernel declaration must be on one line", li + 1)
            });
            let close = l.rfind(')').unwrap_or_else(|| {
                panic!("{fname}:{}: kernel declaration must be on one line", li + 1)
            });
            let head: Vec<&str> = l[..open].split_whitespace().collect();
            assert!(
                head.contains(&"void"),
                "{fname}:{}: kernels return void",
                li + 1
            );
            let name = head.last().unwrap().to_string();
            let decl_params = l[open + 1..close].to_string();
            let mut params = Vec::new();
            for p in decl_params
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                let split = p
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or_else(|| panic!("{fname}:{}: unnamed parameter '{p}'", li + 1));
                let (ty, pname) = (p[..=split].trim().to_string(), p[split + 1..].to_string());
                let kind = param_kind(&ty).unwrap_or_else(|| {
                    panic!(
                        "{fname}:{}: kernel {name}: unsupported parameter type '{ty}'",
                        li + 1
                    )
                });
                params.push(Param {
                    ty,
                    name: pname,
                    kind,
                });
            }
            let mut extents = Vec::new();
            let mut max_dynamic_shared = None;
            let mut j = li;
            while j > 0 && lines[j - 1].trim_start().starts_with("//") {
                j -= 1;
                let c = lines[j].trim_start().trim_start_matches('/').trim();
                if let Some(rest) = c.strip_prefix("max-dynamic-shared:") {
                    max_dynamic_shared = Some(rest.trim().parse::<u32>().unwrap_or_else(|_| {
                        panic!(
                            "{fname}:{}: 'max-dynamic-shared: BYTES' (an integer)",
                            j + 1
                        )
                    }));
                }
                if let Some(rest) = c.strip_prefix("extent:") {
                    let rest = rest.trim();
                    let (p, e) = rest
                        .split_once(char::is_whitespace)
                        .unwrap_or_else(|| panic!("{fname}:{}: 'extent: NAME EXPR'", j + 1));
                    extents.push((p.to_string(), e.trim().to_string()));
                }
            }
            extents.reverse();
            for p in params.iter().filter(|p| p.kind.starts_with("Ptr")) {
                assert!(extents.iter().any(|(n, _)| *n == p.name), "{fname}: kernel {name}: pointer parameter '{}' has no '// extent: {} EXPR' line above the kernel", p.name, p.name);
            }
            for (n, _) in &extents {
                assert!(
                    params
                        .iter()
                        .any(|p| &p.name == n && p.kind.starts_with("Ptr")),
                    "{fname}: kernel {name}: extent for '{n}', which is not a pointer parameter"
                );
            }
            out.push(Kernel {
                name,
                file: fname.clone(),
                decl_params,
                params,
                extents,
                max_dynamic_shared,
            });
        }
    }
    let mut names: Vec<&str> = out.iter().map(|k| k.name.as_str()).collect();
    names.sort();
    for w in names.windows(2) {
        assert!(w[0] != w[1], "kernel name '{}' defined twice", w[0]);
    }
    out
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NVCC") {
        return Some(PathBuf::from(p));
    }
    for var in ["CUDA_PATH", "CUDA_HOME"] {
        if let Ok(d) = std::env::var(var) {
            let p = Path::new(&d).join("bin/nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = root.join(".tools/cuda/bin/nvcc");
    p.is_file().then_some(p)
}

/// FNV-1a 64 of a file's bytes: detects edits of kernel sources since they were packed (not a
/// security hash; the prebuilt folder is the user's own build output).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `source HASH PATH` for every file under kernels/ (recursive, sorted): the .cu sources and
/// the .cuh / sim headers they include. The same lines go into the prebuilt manifest.
fn source_hashes(root: &Path) -> Vec<String> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root.join("kernels"), &mut files);
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            let rel = f.strip_prefix(root).unwrap().to_string_lossy();
            format!("source {:016x} {rel}", fnv1a64(&bytes))
        })
        .collect()
}

/// Prebuilt fatbins from tools/pack-kernels.sh, checked against the current sources.
/// Ok((status, ptxas report, fatbins)) when usable; Err(why not) when the folder is stale or
/// incomplete.
#[allow(clippy::type_complexity)]
fn use_prebuilt(
    root: &Path,
    dir: &Path,
    cu_files: &[PathBuf],
) -> Result<(String, String, Vec<(String, PathBuf)>), String> {
    let manifest_path = dir.join("manifest.txt");
    let manifest = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("cannot read {}: {e}", manifest_path.display()))?;
    let field = |key: &str| {
        manifest
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or("?")
            .trim()
            .to_string()
    };
    let packed: Vec<&str> = manifest
        .lines()
        .filter(|l| l.starts_with("source "))
        .collect();
    let now = source_hashes(root);
    let path_of = |l: &str| l.splitn(3, ' ').nth(2).unwrap_or("").to_string();
    // a file edited, added or removed since packing
    let mut changed: Vec<String> = Vec::new();
    for l in &now {
        if !packed.contains(&l.as_str()) {
            changed.push(path_of(l));
        }
    }
    for l in &packed {
        if !now.iter().any(|n| n == l) {
            changed.push(path_of(l));
        }
    }
    changed.sort();
    changed.dedup();
    if !changed.is_empty() {
        return Err(format!(
            "the prebuilt kernels in {} are stale (changed since tools/pack-kernels.sh packed them: {}) and are not used",
            dir.display(),
            changed.join(", ")
        ));
    }
    let mut fatbins = Vec::new();
    for f in cu_files {
        let stem = f.file_stem().unwrap().to_string_lossy();
        let p = dir.join(format!("{stem}.fatbin"));
        if !p.is_file() {
            return Err(format!(
                "{} is incomplete: no {stem}.fatbin; rerun tools/pack-kernels.sh",
                dir.display()
            ));
        }
        fatbins.push((f.file_name().unwrap().to_string_lossy().to_string(), p));
    }
    let report = std::fs::read_to_string(dir.join("ptxas-report.txt")).unwrap_or_default();
    let status = format!(
        "prebuilt fatbins from {} (built by nvcc {} on {}; sources match kernels/): {}",
        dir.strip_prefix(root).unwrap_or(dir).display(),
        field("nvcc:"),
        field("built:"),
        arch_list()
    );
    Ok((status, report, fatbins))
}

/// One row per (kernel, arch) from `ptxas -v` output.
fn ptxas_table(report: &str) -> String {
    let mut rows = String::from(
        "kernel                  arch    regs  smem_B  stack_B  spill_st_B  spill_ld_B\n",
    );
    let (mut name, mut arch) = (String::new(), String::new());
    let (mut stack, mut sst, mut sld) = (0u64, 0u64, 0u64);
    let num_before = |s: &str, key: &str| -> u64 {
        s.find(key)
            .and_then(|i| {
                s[..i]
                    .split_whitespace()
                    .last()
                    .and_then(|w| w.trim_matches(',').parse().ok())
            })
            .unwrap_or(0)
    };
    for line in report.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + 26..];
            name = rest.split('\'').next().unwrap_or("").to_string();
            arch = rest
                .split("for '")
                .nth(1)
                .and_then(|s| s.split('\'').next())
                .unwrap_or("")
                .to_string();
        } else if line.contains("bytes stack frame") {
            stack = num_before(line, "bytes stack frame");
            sst = num_before(line, "bytes spill stores");
            sld = num_before(line, "bytes spill loads");
        } else if line.contains("Used") && line.contains("registers") && !name.is_empty() {
            let regs = num_before(line, "registers");
            let smem = num_before(line, "bytes smem");
            let _ = writeln!(
                rows,
                "{name:<23} {arch:<7} {regs:>4}  {smem:>6}  {stack:>7}  {sst:>10}  {sld:>10}"
            );
            name.clear();
        }
    }
    rows
}

/// The committed launch-limit table (registers and static shared memory per kernel and
/// architecture from ptxas), so builds without nvcc (SER_NO_NVCC=1, a fresh clone) check
/// launches against the same limits. Regenerated by every build that ran nvcc.
const LIMITS_FILE: &str = "tools/launch-limits.txt";

/// What a kernel's resource use depends on: its .cu file and every header under kernels/
/// (not the sim shim), as one FNV-1a hash.
fn limits_hash(kdir: &Path, cu: &Path) -> String {
    let mut bytes = std::fs::read(cu).unwrap_or_else(|e| panic!("read {}: {e}", cu.display()));
    let mut headers: Vec<PathBuf> = std::fs::read_dir(kdir)
        .expect("kernels/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cuh"))
        .collect();
    headers.sort();
    for h in headers {
        bytes.extend(std::fs::read(&h).unwrap_or_else(|e| panic!("read {}: {e}", h.display())));
    }
    format!("{:016x}", fnv1a64(&bytes))
}

/// (kernel, arch, registers, static shared bytes) from `ptxas -v` output.
fn ptxas_rows(report: &str) -> Vec<(String, String, u64, u64)> {
    let table = ptxas_table(report);
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 4).then(|| {
                (
                    w[0].to_string(),
                    w[1].to_string(),
                    w[2].parse().unwrap_or(0),
                    w[3].parse().unwrap_or(0),
                )
            })
        })
        .collect()
}

/// The launch-limit table: from this build's ptxas report when there is one (also written to
/// LIMITS_FILE when that differs), else from LIMITS_FILE, keeping only the kernels of .cu
/// files whose hash still matches. Returns the rows, the kernels' files without rows, and a
/// status line.
#[allow(clippy::type_complexity)]
fn launch_limits(
    root: &Path,
    kdir: &Path,
    files: &[PathBuf],
    kernels: &[Kernel],
    report: &str,
    from_nvcc: bool,
) -> (Vec<(String, String, u64, u64)>, String) {
    let path = root.join(LIMITS_FILE);
    let rows = ptxas_rows(report);
    let file_of = |k: &str| kernels.iter().find(|x| x.name == k).map(|x| x.file.clone());
    if !rows.is_empty() {
        let mut text = String::from(
            "# Registers and static shared memory per kernel and architecture, from ptxas -v.\n\
             # Generated by build.rs whenever it runs nvcc; do not edit. Builds without nvcc\n\
             # use the rows of a .cu file while its `file` hash (the .cu and kernels/*.cuh)\n\
             # matches: rebuild with nvcc after editing kernels.\n",
        );
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy();
            let _ = writeln!(text, "file {} {name}", limits_hash(kdir, f));
        }
        for (k, arch, regs, smem) in &rows {
            let _ = writeln!(text, "kernel {k} {arch} {regs} {smem}");
        }
        if from_nvcc && std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            if let Err(e) = std::fs::write(&path, &text) {
                println!("cargo:warning=cannot update {LIMITS_FILE}: {e}");
            }
        }
        return (rows, "from this build's ptxas report".into());
    }
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("cargo:warning=no {LIMITS_FILE}: launches are not checked against registers and static shared memory; build once with nvcc");
        return (Vec::new(), format!("{LIMITS_FILE} missing"));
    };
    let mut fresh = Vec::new();
    let mut stale = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let want = format!("file {} {name}", limits_hash(kdir, f));
        if text.lines().any(|l| l == want) {
            fresh.push(name);
        } else {
            stale.push(name);
        }
    }
    let rows = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 5 && w[0] == "kernel").then(|| {
                (
                    w[1].to_string(),
                    w[2].to_string(),
                    w[3].parse().unwrap_or(0),
                    w[4].parse().unwrap_or(0),
                )
            })
        })
        .filter(|(k, ..)| file_of(k).is_some_and(|f| fresh.contains(&f)))
        .collect();
    let status = if stale.is_empty() {
        format!("from {LIMITS_FILE} (matches kernels/)")
    } else {
        println!("cargo:warning={LIMITS_FILE} is stale for {} (edited since nvcc last ran): their launches are checked without register and static shared memory limits; build once with nvcc (e.g. NVCC=/path/to/nvcc cargo build) to refresh it", stale.join(", "));
        format!(
            "from {LIMITS_FILE}, stale (so unchecked) for {}",
            stale.join(", ")
        )
    };
    (rows, status)
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for v in [
        "NVCC",
        "CUDA_PATH",
        "CUDA_HOME",
        "SER_NO_NVCC",
        "SER_KERNELS_STRICT",
        "SER_PREBUILT_KERNELS",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kdir)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    let kernels = parse_kernels(&kdir, &files);
    let prebuilt = match std::env::var("SER_PREBUILT_KERNELS") {
        Ok(v) if v == "0" => None,
        Ok(v) if !v.is_empty() => Some(root.join(v)),
        _ => Some(root.join(".kernels-prebuilt")),
    };
    // Only an existing path: cargo reruns the script on every build for a missing one.
    // tools/pack-kernels.sh touches kernels/ after creating the folder.
    if let Some(p) = prebuilt.as_ref().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    // --- sim: host build of the same sources -------------------------------------------------
    let mut reg = String::from(
        "// generated by build.rs: kernel name -> trampoline\n#include \"common.cuh\"\n",
    );
    for k in &kernels {
        let _ = writeln!(reg, "extern \"C\" void {}({});", k.name, k.decl_params);
    }
    reg.push_str("extern \"C\" const ser_sim::KernelEntry ser_sim_kernels[] = {\n");
    for k in &kernels {
        let _ = writeln!(
            reg,
            "    {{\"{0}\", [](void** a) {{ ser_sim::invoke(&{0}, a); }}}},",
            k.name
        );
    }
    if kernels.is_empty() {
        reg.push_str("    {nullptr, nullptr},\n");
    }
    let _ = writeln!(
        reg,
        "}};\nextern \"C\" const int ser_sim_kernel_count = {};",
        kernels.len()
    );
    let reg_path = out.join("sim_registry.cpp");
    std::fs::write(&reg_path, reg).unwrap();
    let base = || {
        let mut cc = cc::Build::new();
        cc.cpp(true)
            .std("c++17")
            .opt_level(2)
            .include(&kdir)
            .flag("-pthread")
            .flag("-Wall")
            .flag("-Wextra")
            .flag("-Wno-unused-parameter")
            .flag("-Wno-unknown-pragmas")
            .warnings_into_errors(true)
            .flag("-x")
            .flag("c++");
        cc
    };
    // The kernels with g++'s ThreadSanitizer instrumentation: every load, store and atomic
    // calls a __tsan_* function, which kernels/sim/shim.cpp defines (no TSan runtime is
    // linked) for the sim's racecheck and initcheck. The shim and registry are not
    // instrumented.
    let mut kernels_cc = base();
    kernels_cc
        .flag("-fsanitize=thread")
        .flag("--param=tsan-instrument-func-entry-exit=0");
    for f in &files {
        kernels_cc.file(f);
    }
    let kernel_objects = kernels_cc.compile_intermediates();
    let mut cc = base();
    for o in &kernel_objects {
        cc.object(o);
    }
    cc.file(kdir.join("sim/shim.cpp")).file(&reg_path);
    cc.compile("ser_sim_kernels");
    println!("cargo:rustc-link-lib=pthread");

    // --- cuda: nvcc -------------------------------------------------------------------------
    let strict = std::env::var("SER_KERNELS_STRICT").is_ok_and(|v| v == "1");
    let skip = std::env::var("SER_NO_NVCC").is_ok_and(|v| v == "1");
    let nvcc = if skip { None } else { find_nvcc(&root) };
    let mut fatbins: Vec<(String, PathBuf)> = Vec::new();
    // the toolkit that built the kernels: the driver must support at least its major version
    let mut built_by: Option<(u32, u32)> = None;
    // written only by an nvcc build below, so tools/pack-kernels.sh never packs an old one
    let _ = std::fs::remove_file(out.join("kernel-sources.txt"));
    let mut report = String::new();
    let nvcc_ran = nvcc.is_some();
    let status: String = match nvcc {
        None => {
            let why = if skip {
                "SER_NO_NVCC=1 was set"
            } else {
                "nvcc was not found (NVCC, CUDA_PATH, CUDA_HOME, PATH, .tools/cuda)"
            };
            let packed = prebuilt.filter(|p| p.join("manifest.txt").is_file());
            match packed.map(|p| use_prebuilt(&root, &p, &files)) {
                Some(Ok((status, rep, bins))) => {
                    built_by = status
                        .split("nvcc ")
                        .nth(1)
                        .and_then(|v| cuda_version(v.split(' ').next().unwrap_or("")));
                    report = rep;
                    fatbins = bins;
                    status
                }
                other => {
                    let stale = match other {
                        Some(Err(e)) => {
                            println!("cargo:warning={e}");
                            format!("; {e}")
                        }
                        _ => String::new(),
                    };
                    if strict {
                        panic!("SER_KERNELS_STRICT=1 but {why} and there are no usable prebuilt kernels{stale}. Fix: run tools/install-cuda-compiler.sh, or tools/pack-kernels.sh where nvcc is and carry .kernels-prebuilt/");
                    }
                    println!("cargo:warning=CUDA kernels not compiled: {why}; the cuda device is unavailable (sim and cpu work). Fix: bash tools/install-cuda-compiler.sh, then rebuild");
                    let fix = if !stale.is_empty() {
                        "rerun `bash tools/pack-kernels.sh` where nvcc is (or `bash tools/install-cuda-compiler.sh`)"
                    } else if skip {
                        "unset SER_NO_NVCC"
                    } else {
                        "run `bash tools/install-cuda-compiler.sh`"
                    };
                    format!("CUDA kernels were not compiled at build time: {why}{stale}. Fix: {fix} and rebuild.")
                }
            }
        }
        Some(nvcc) => {
            let jobs: Vec<_> = files
                .iter()
                .map(|f| {
                    let stem = f.file_stem().unwrap().to_string_lossy().to_string();
                    let dst = out.join(format!("{stem}.fatbin"));
                    let mut cmd = Command::new(&nvcc);
                    cmd.args([
                        "-fatbin",
                        "-std=c++17",
                        "-lineinfo",
                        "-Werror",
                        "all-warnings",
                        "-Xptxas",
                        "-v",
                    ])
                    .args(CUDA_ARCHS.iter().enumerate().flat_map(|(i, a)| {
                        let code = if i + 1 == CUDA_ARCHS.len() {
                            format!("arch=compute_{a},code=[compute_{a},sm_{a}]")
                        } else {
                            format!("arch=compute_{a},code=sm_{a}")
                        };
                        ["-gencode".to_string(), code]
                    }))
                    .arg("-I")
                    .arg(&kdir)
                    .arg("-o")
                    .arg(&dst)
                    .arg(f);
                    let fname = f.file_name().unwrap().to_string_lossy().to_string();
                    (fname, dst, std::thread::spawn(move || cmd.output()))
                })
                .collect();
            for (fname, dst, h) in jobs {
                let o = h
                    .join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
                let err = String::from_utf8_lossy(&o.stderr).to_string();
                let _ = writeln!(
                    report,
                    "==== {fname}\n{}{err}",
                    String::from_utf8_lossy(&o.stdout)
                );
                if !o.status.success() {
                    panic!("nvcc failed on kernels/{fname} ({}):\n{err}", o.status);
                }
                fatbins.push((fname, dst));
            }
            let full = Command::new(&nvcc)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            let ver = full.lines().last().unwrap_or("").to_string();
            // what tools/pack-kernels.sh puts in .kernels-prebuilt/manifest.txt
            let mut sources = source_hashes(&root).join("\n");
            sources.push('\n');
            std::fs::write(out.join("kernel-sources.txt"), sources).unwrap();
            // `release 13.0,` is on the line before the last
            built_by = cuda_version(&full);
            format!(
                "CUDA kernels compiled by {} ({ver}): {}",
                nvcc.display(),
                arch_list()
            )
        }
    };
    std::fs::write(out.join("ptxas-report.txt"), &report).unwrap();
    std::fs::write(out.join("ptxas-table.txt"), ptxas_table(&report)).unwrap();
    // An input only without nvcc. With nvcc it is this build's output: watching it would make
    // the next build rerun this script (and nvcc) whenever it was rewritten here, because the
    // write is newer than the run.
    if !nvcc_ran {
        println!("cargo:rerun-if-changed={LIMITS_FILE}");
    }
    let from_nvcc = nvcc_ran;
    let (limit_rows, limits_status) =
        launch_limits(&root, &kdir, &files, &kernels, &report, from_nvcc);

    // --- generated Rust table ---------------------------------------------------------------
    let mut rs = String::from("// generated by build.rs from kernels/*.cu\n");
    let _ = writeln!(
        rs,
        "pub const KERNELS_COMPILED: bool = {};",
        !fatbins.is_empty()
    );
    let _ = writeln!(rs, "pub const NVCC_STATUS: &str = {status:?};");
    let _ = writeln!(rs, "pub const CUDA_ARCHS: &[u32] = &{CUDA_ARCHS:?};");
    let _ = writeln!(
        rs,
        "pub const KERNELS_CUDA_VERSION: Option<(u32, u32)> = {built_by:?};"
    );
    rs.push_str("pub static KERNELS: &[KernelSig] = &[\n");
    for k in &kernels {
        let _ = write!(
            rs,
            "    KernelSig {{ name: {:?}, file: {:?}, params: &[",
            k.name, k.file
        );
        for p in &k.params {
            let _ = write!(
                rs,
                "Param {{ name: {:?}, ty: {:?}, kind: ParamKind::{} }}, ",
                p.name, p.ty, p.kind
            );
        }
        rs.push_str("], extents: &[");
        for (p, e) in &k.extents {
            let _ = write!(rs, "({p:?}, {e:?}), ");
        }
        let _ = writeln!(rs, "], max_dynamic_shared: {:?} }},", k.max_dynamic_shared);
    }
    rs.push_str("];\npub static FATBINS: &[(&str, &[u8])] = &[\n");
    for (f, p) in &fatbins {
        let _ = writeln!(
            rs,
            "    ({f:?}, include_bytes!({:?})),",
            p.display().to_string()
        );
    }
    rs.push_str("];\n");
    let _ = writeln!(
        rs,
        "pub const LAUNCH_LIMITS_STATUS: &str = {limits_status:?};"
    );
    rs.push_str("pub static LAUNCH_LIMITS: &[ResourceUse] = &[\n");
    for (k, arch, regs, smem) in &limit_rows {
        let _ = writeln!(
            rs,
            "    ResourceUse {{ kernel: {k:?}, arch: {arch:?}, registers: {regs}, static_shared: {smem} }},"
        );
    }
    rs.push_str("];\n");
    let _ = writeln!(
        rs,
        "pub const PTXAS_TABLE: &str = include_str!({:?});",
        out.join("ptxas-table.txt").display().to_string()
    );
    std::fs::write(out.join("kernels_table.rs"), rs).unwrap();
}
