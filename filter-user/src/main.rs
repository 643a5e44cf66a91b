fn main() -> anyhow::Result<()> {
    let mut ebpf = aya::Ebpf::load(filter_user::BPF_OBJECT)?;
    let prog: &mut aya::programs::Xdp = ebpf.program_mut("mxguard").unwrap().try_into()?;
    prog.load()?;
    println!("loaded");
    Ok(())
}
