//! Reading and writing the benchmark's traffic as pcap files, so generated traffic and a
//! user's capture (`--pcap FILE`, pcap or pcapng, Ethernet link type) go through the same path.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use pcap_file::{
    DataLink,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    pcapng::{Block, PcapNgReader},
};

/// Writes `frames` as an Ethernet pcap, one microsecond apart.
pub fn write(path: &Path, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(BufWriter::new(file), header)
        .with_context(|| format!("writing {}", path.display()))?;
    for (index, frame) in frames.iter().enumerate() {
        let packet = PcapPacket::new(
            Duration::from_micros(index as u64),
            frame.len() as u32,
            frame,
        );
        writer
            .write_packet(&packet)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads every Ethernet frame of a pcap or pcapng file. Frames captured shorter than they were
/// on the wire (a snap length) are refused: replaying them would measure other traffic.
pub fn read(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut magic))
        .with_context(|| format!("reading {}", path.display()))?;
    let file =
        BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut frames = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader =
            PcapNgReader::new(file).with_context(|| format!("{} is not pcapng", path.display()))?;
        while let Some(block) = reader.next_block() {
            let block = block
                .with_context(|| format!("reading {}", path.display()))?
                .into_owned();
            let (data, original_len) = match block {
                Block::EnhancedPacket(packet) => {
                    let link = reader
                        .packet_interface(&packet)
                        .map(|interface| interface.linktype);
                    if link != Some(DataLink::ETHERNET) {
                        bail!(
                            "{}: packet on a {link:?} interface; only Ethernet captures can be replayed",
                            path.display()
                        );
                    }
                    (packet.data.to_vec(), packet.original_len)
                }
                Block::SimplePacket(packet) => (packet.data.to_vec(), packet.original_len),
                _ => continue,
            };
            check_len(path, &data, original_len)?;
            frames.push(data);
        }
    } else {
        let mut reader = PcapReader::new(file)
            .with_context(|| format!("{} is not a pcap file", path.display()))?;
        if reader.header().datalink != DataLink::ETHERNET {
            bail!(
                "{}: link type {:?}; only Ethernet captures can be replayed",
                path.display(),
                reader.header().datalink
            );
        }
        while let Some(packet) = reader.next_packet() {
            let packet = packet.with_context(|| format!("reading {}", path.display()))?;
            check_len(path, &packet.data, packet.orig_len)?;
            frames.push(packet.data.into_owned());
        }
    }
    if frames.is_empty() {
        bail!("{} holds no packets", path.display());
    }
    Ok(frames)
}

fn check_len(path: &Path, data: &[u8], original_len: u32) -> anyhow::Result<()> {
    if (data.len() as u32) < original_len {
        bail!(
            "{}: a packet was captured truncated ({} of {original_len} bytes); capture with a full snap length",
            path.display(),
            data.len()
        );
    }
    if data.len() < 14 {
        bail!(
            "{}: a packet is shorter than an Ethernet header",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("mxbench-pcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.pcap");
        let frames = crate::traffic::classes(20, 5).remove(3).frames;
        write(&path, &frames).unwrap();
        assert_eq!(read(&path).unwrap(), frames);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
