//! The XDP program loaded into the kernel (the verifier has run), with the object it came from.

use anyhow::{Context as _, anyhow};
use aya::{Ebpf, EbpfLoader, programs::Xdp};
use filter_common::{PROGRAM_NAME, map_names};

use crate::{BPF_OBJECT, links::PinDir, maps::MapSource};

/// The loaded program. Its maps are still in the object until they are opened through
/// [`LoadedProgram::maps`].
pub struct LoadedProgram {
    ebpf: Ebpf,
}

impl LoadedProgram {
    /// Loads the embedded object with fresh, unpinned maps.
    pub fn load() -> anyhow::Result<Self> {
        let ebpf = Ebpf::load(BPF_OBJECT).context("loading the BPF object")?;
        Self::verify(ebpf)
    }

    /// Loads the embedded object with its maps pinned under `pins` (current layout): maps
    /// already pinned there are reused, so the allowlist, ports and counters carry over.
    pub fn load_pinned(pins: &PinDir) -> anyhow::Result<Self> {
        pins.create()?;
        let mut loader = EbpfLoader::new();
        for name in map_names::ALL {
            loader.map_pin_path(name, pins.map_path(name));
        }
        let ebpf = loader.load(BPF_OBJECT).with_context(|| {
            format!(
                "loading the BPF object with maps pinned under {}",
                pins.root().display()
            )
        })?;
        Self::verify(ebpf)
    }

    /// Loads the program into the kernel. The maps stay in the object until then (aya needs
    /// their fds alive for the relocations).
    fn verify(mut ebpf: Ebpf) -> anyhow::Result<Self> {
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("BPF object has no program {PROGRAM_NAME}"))?
            .try_into()
            .context("program is not XDP")?;
        program
            .load()
            .context("loading the XDP program into the kernel (verifier)")?;
        Ok(LoadedProgram { ebpf })
    }

    /// Where the loaded object's maps are taken from (each map once).
    pub fn maps(&mut self) -> MapSource<'_> {
        MapSource::Object(&mut self.ebpf)
    }

    /// The XDP program, for `BPF_PROG_TEST_RUN` and its info.
    pub fn xdp(&self) -> anyhow::Result<&Xdp> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program {PROGRAM_NAME}"))?
            .try_into()
            .context("program is not XDP")
    }

    /// The XDP program, for attaching.
    pub fn xdp_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("no program {PROGRAM_NAME}"))?
            .try_into()
            .context("program is not XDP")
    }
}
