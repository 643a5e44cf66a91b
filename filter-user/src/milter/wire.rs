//! The loop that serves one milter connection: it reads the MTA's packets, passes each to the
//! session's callbacks and writes their answers. miltr-server 0.2's own loop answers every
//! command, including those the option negotiation said need no answer (`SMFIP_NR_*`), so with
//! it a milter cannot offer Postfix the no-reply steps, and Postfix waits for one answer per
//! header. This loop keeps miltr-common's packet parser and encoder and the `Milter`
//! callbacks, and leaves out exactly the answers the MTA agreed to go without
//! (docs/milter.md, D11).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::BytesMut;
use miltr_common::{
    actions::Action,
    decoding::ClientCommand,
    encoding::{ServerMessage, Writable as _},
    optneg::{Capability, Protocol},
};
use miltr_server::Milter;
use tokio::io::{
    AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader, BufWriter,
};

use super::session::MilterSession;

/// Serves the connection until the MTA quits or closes it; an error (garbage, an oversized
/// packet, a peer that vanished mid-packet, nothing sent for `idle`) ends only this
/// connection.
pub async fn serve<S>(
    stream: S,
    milter: &mut MilterSession,
    max_packet: usize,
    idle: Duration,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut writer = BufWriter::new(writer);
    // Until negotiated, nothing is skipped and every modification is allowed through (as
    // miltr-server does); Postfix always negotiates first.
    let mut protocol = Protocol::empty();
    let mut capabilities = Capability::all();
    loop {
        let Ok(read) = tokio::time::timeout(idle, read_command(&mut reader, max_packet)).await
        else {
            bail!("the MTA sent nothing for {idle:?} (--milter-idle-timeout)");
        };
        let Some(command) = read? else {
            break;
        };
        let answer: Option<Action> = match command {
            ClientCommand::OptNeg(theirs) => {
                let ours = milter
                    .option_negotiation(theirs)
                    .await
                    .map_err(|error| anyhow::anyhow!("option negotiation: {error}"))?;
                protocol = ours.protocol;
                capabilities = ours.capabilities;
                send(&mut writer, &[ServerMessage::from(ours)]).await?;
                None
            }
            ClientCommand::Macro(macros) => {
                let Ok(()) = milter.macro_(macros).await;
                None
            }
            ClientCommand::Connect(connect) => {
                let Ok(action) = milter.connect(connect).await;
                (!protocol.contains(Protocol::NR_CONNECT)).then_some(action)
            }
            ClientCommand::Helo(helo) => {
                let Ok(action) = milter.helo(helo).await;
                (!protocol.contains(Protocol::NR_HELO)).then_some(action)
            }
            ClientCommand::Mail(mail) => {
                let Ok(action) = milter.mail(mail).await;
                (!protocol.contains(Protocol::NR_MAIL)).then_some(action)
            }
            ClientCommand::Recipient(recipient) => {
                let Ok(action) = milter.rcpt(recipient).await;
                (!protocol.contains(Protocol::NR_RECIPIENT)).then_some(action)
            }
            ClientCommand::Data(_) => {
                let Ok(action) = milter.data().await;
                (!protocol.contains(Protocol::NR_DATA)).then_some(action)
            }
            ClientCommand::Header(header) => {
                let Ok(action) = milter.header(header).await;
                (!protocol.contains(Protocol::NR_HEADER)).then_some(action)
            }
            ClientCommand::EndOfHeader(_) => {
                let Ok(action) = milter.end_of_header().await;
                (!protocol.contains(Protocol::NR_END_OF_HEADER)).then_some(action)
            }
            ClientCommand::Body(body) => {
                let Ok(action) = milter.body(body).await;
                (!protocol.contains(Protocol::NR_BODY)).then_some(action)
            }
            ClientCommand::Unknown(unknown) => {
                let Ok(action) = milter.unknown(unknown).await;
                (!protocol.contains(Protocol::NR_UNKNOWN)).then_some(action)
            }
            // The end of the message is always answered: modifications, then the verdict.
            ClientCommand::EndOfBody(_) => {
                let Ok(mut response) = milter.end_of_body().await;
                response.filter_mods_by_caps(capabilities);
                let messages: Vec<ServerMessage> = response.into();
                send(&mut writer, &messages).await?;
                None
            }
            ClientCommand::Abort(_) => {
                let Ok(()) = milter.abort().await;
                None
            }
            ClientCommand::Quit(_) => {
                let Ok(()) = milter.quit().await;
                return Ok(());
            }
            // The MTA keeps the connection for its next SMTP session.
            ClientCommand::QuitNc(_) => {
                let Ok(()) = milter.quit_nc().await;
                None
            }
        };
        if let Some(action) = answer {
            send(&mut writer, &[ServerMessage::from(action)]).await?;
        }
    }
    Ok(())
}

/// Reads one packet: a 4-byte big-endian length, then that many bytes (command code first).
/// `None` when the MTA closed the connection between packets.
async fn read_command<R>(reader: &mut R, max_packet: usize) -> anyhow::Result<Option<ClientCommand>>
where
    R: AsyncRead + Unpin,
{
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error).context("reading a packet's length"),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > max_packet {
        bail!("a packet of {length} bytes, more than the {max_packet} accepted");
    }
    let mut packet = BytesMut::zeroed(length);
    reader
        .read_exact(&mut packet)
        .await
        .with_context(|| format!("reading a packet of {length} bytes"))?;
    ClientCommand::parse(packet)
        .map(Some)
        .map_err(|error| anyhow::anyhow!("a malformed packet: {error}"))
}

/// Writes the messages and flushes once: the MTA is waiting for them.
async fn send<W>(writer: &mut W, messages: &[ServerMessage]) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut buffer = BytesMut::new();
    for message in messages {
        let length = u32::try_from(message.len() + 1).context("an answer too large to send")?;
        buffer.extend_from_slice(&length.to_be_bytes());
        buffer.extend_from_slice(&[message.code()]);
        message.write(&mut buffer);
    }
    writer
        .write_all(&buffer)
        .await
        .context("writing an answer")?;
    writer.flush().await.context("sending an answer")
}
