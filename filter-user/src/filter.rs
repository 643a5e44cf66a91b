//! A configured filter: the loaded program, typed handles on its maps, the allowlist, and the
//! interfaces it is attached to. Each part owns its own state; this type only puts them
//! together and does what needs two of them (attaching needs the program and the links).

use crate::{
    allowlist::Allowlist,
    links::{AttachMode, AttachOutcome, AttachedMode, Links, PinDir},
    maps::FilterMaps,
    program::LoadedProgram,
};

pub struct Filter {
    pub program: LoadedProgram,
    pub maps: FilterMaps,
    pub allowlist: Allowlist,
    pub links: Links,
}

impl Filter {
    /// Loads the program with fresh maps: an empty allowlist, no protected ports and the
    /// `Drop` action. Nothing is attached yet; attachments are owned by this value.
    pub fn load() -> anyhow::Result<Self> {
        Self::assemble(LoadedProgram::load()?, Links::owned())
    }

    /// Loads the program with its maps pinned under `pins`, reusing what an earlier run left
    /// there; attachments are pinned too (see `links`).
    pub fn load_pinned(pins: &PinDir) -> anyhow::Result<Self> {
        Self::assemble(
            LoadedProgram::load_pinned(pins)?,
            Links::pinned(pins.clone()),
        )
    }

    fn assemble(mut program: LoadedProgram, links: Links) -> anyhow::Result<Self> {
        let mut source = program.maps();
        let maps = FilterMaps::open(&mut source)?;
        let allowlist = Allowlist::open(&mut source)?;
        Ok(Filter {
            program,
            maps,
            allowlist,
            links,
        })
    }

    /// Attaches to `iface`, owned by this value (unpinned).
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> anyhow::Result<AttachedMode> {
        self.links.attach(self.program.xdp_mut()?, iface, mode)
    }

    /// Attaches to every interface through pinned links, all or nothing for fresh ones.
    pub fn attach_all_pinned(
        &mut self,
        ifaces: &[String],
        mode: AttachMode,
    ) -> anyhow::Result<Vec<(AttachedMode, AttachOutcome)>> {
        self.links
            .attach_all_pinned(self.program.xdp_mut()?, ifaces, mode)
    }

    /// Attaches `iface` afresh through a pinned link after its device was re-created.
    pub fn reattach_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> anyhow::Result<AttachedMode> {
        self.links
            .reattach_pinned(self.program.xdp_mut()?, iface, mode)
    }
}
