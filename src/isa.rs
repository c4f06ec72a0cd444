//! Which x86-64 vector instruction set our own SIMD code may use: the CPU's best, capped by
//! `SER_CPU_ISA=avx2|baseline` so that the AVX2 paths (what most laptops and desktops have)
//! can be run and measured on an AVX-512 machine.
//!
//! The cap covers every dispatch of ours (the front end's lane FFT). The GEMMs of the `gemm`
//! crate pick their microkernels from the CPU alone; its AVX-512 ones are compiled in by the
//! default cargo feature `avx512`, so a faithful AVX2 measurement is a build with
//! `--no-default-features` run with `SER_CPU_ISA=avx2` (`ser-engine info` says which).
//!
//! Shared module: may be used by every layer; uses nothing of the crate.

/// Vector instruction sets, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No AVX2: plain code and rustfft's own detection.
    Baseline,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F (with AVX2 + FMA).
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

/// The CPU's best instruction set.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

/// Parses `SER_CPU_ISA`: `avx512`, `avx2`, `baseline`, or `auto` / empty (no cap).
pub fn parse_cap(v: &str) -> Result<Option<Isa>, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "avx512" => Ok(Some(Isa::Avx512)),
        "avx2" => Ok(Some(Isa::Avx2)),
        "baseline" | "none" => Ok(Some(Isa::Baseline)),
        "auto" | "" => Ok(None),
        other => Err(format!(
            "SER_CPU_ISA={other:?} is not avx512|avx2|baseline|auto; using auto"
        )),
    }
}

/// The instruction set our SIMD code uses: [`detected`] capped by `SER_CPU_ISA` (read once;
/// a bad value warns and is ignored, since a speed knob must not abort a run).
pub fn active() -> Isa {
    static ACTIVE: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let cap =
            parse_cap(&std::env::var("SER_CPU_ISA").unwrap_or_default()).unwrap_or_else(|e| {
                eprintln!("warning: {e}");
                None
            });
        cap.map_or(detected(), |c| c.min(detected()))
    })
}

/// Whether the `gemm` crate's AVX-512 microkernels are compiled in (cargo feature `avx512`).
pub const GEMM_AVX512_COMPILED: bool = cfg!(feature = "avx512");

/// The line `ser-engine info` and `bench` print.
pub fn report() -> String {
    let gemm = if GEMM_AVX512_COMPILED && detected() == Isa::Avx512 {
        "AVX-512 (gemm crate; build with --no-default-features for AVX2 GEMMs)"
    } else if detected() >= Isa::Avx2 {
        "AVX2/FMA (gemm crate)"
    } else {
        "plain (gemm crate)"
    };
    format!(
        "cpu isa: {} detected, {} in use (SER_CPU_ISA), GEMMs {gemm}",
        detected().name(),
        active().name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_parsing_and_order() {
        assert_eq!(parse_cap("AVX2"), Ok(Some(Isa::Avx2)));
        assert_eq!(parse_cap(" avx512 "), Ok(Some(Isa::Avx512)));
        assert_eq!(parse_cap("baseline"), Ok(Some(Isa::Baseline)));
        assert_eq!(parse_cap(""), Ok(None));
        assert_eq!(parse_cap("auto"), Ok(None));
        assert!(parse_cap("sse9").is_err());
        assert!(Isa::Baseline < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        // a cap never raises the CPU's own level
        assert!(Isa::Avx512.min(detected()) <= detected());
        assert!(report().starts_with("cpu isa: "));
    }
}
