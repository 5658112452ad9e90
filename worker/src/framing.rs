//! Length-prefixed framing of protobuf messages, as the worker and its slot processes speak
//! it over pipes: each message is its length as 4 little-endian bytes, then the message
//! (prost). Frames announcing more than [`MAX_FRAME`] bytes are refused as corrupt.

use std::io::{self, Read};

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Frames larger than this are refused as corrupt.
pub const MAX_FRAME: usize = 64 << 20;

/// One message, framed.
pub fn frame(msg: &impl Message) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    msg.encode(&mut buf).expect("a Vec grows");
    buf
}

/// The length a frame announces, refused when it cannot be right.
fn frame_len(len: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes (corrupt stream?)"),
        ));
    }
    Ok(len)
}

fn decode<M: Message + Default>(body: &[u8]) -> io::Result<M> {
    M::decode(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Whether reading a frame's length met the clean end of the stream (any other failure is
/// an error).
fn at_end(read: io::Result<()>) -> io::Result<bool> {
    match read {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(true),
        Err(e) => Err(e),
    }
}

/// Reads one framed message; `None` at a clean end of the stream.
pub fn read_frame<M: Message + Default>(r: &mut impl Read) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    if at_end(r.read_exact(&mut len))? {
        return Ok(None);
    }
    let mut body = vec![0; frame_len(len)?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// [`read_frame`] on an asynchronous stream.
pub async fn read_frame_async<M: Message + Default>(
    r: &mut (impl AsyncRead + Unpin),
) -> io::Result<Option<M>> {
    let mut len = [0u8; 4];
    if at_end(r.read_exact(&mut len).await.map(drop))? {
        return Ok(None);
    }
    let mut body = vec![0; frame_len(len)?];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bnsweep_proto as pb;

    fn eval(step: u64) -> pb::SlotEvent {
        pb::SlotEvent {
            event: Some(pb::slot_event::Event::Eval(pb::EvalRow {
                step,
                test_loss: 1.5,
                test_acc: 0.25,
            })),
        }
    }

    #[test]
    fn a_frame_is_its_length_in_four_little_endian_bytes_then_the_message() {
        let event = eval(7);
        let bytes = frame(&event);
        let body = event.encode_to_vec();
        assert_eq!(bytes[..4], (body.len() as u32).to_le_bytes());
        assert_eq!(bytes[4..], body[..]);
    }

    #[test]
    fn the_async_reader_reads_what_the_sync_one_does() {
        let mut bytes = frame(&eval(1));
        bytes.extend(frame(&eval(2)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = bytes.as_slice();
            assert_eq!(read_frame_async(&mut r).await.unwrap(), Some(eval(1)));
            assert_eq!(read_frame_async(&mut r).await.unwrap(), Some(eval(2)));
            assert_eq!(
                read_frame_async::<pb::SlotEvent>(&mut r).await.unwrap(),
                None
            );
            let mut torn: &[u8] = &[200, 0, 0, 0, 1, 2];
            assert!(read_frame_async::<pb::SlotEvent>(&mut torn).await.is_err());
            let mut huge: &[u8] = &[255, 255, 255, 255];
            assert!(read_frame_async::<pb::SlotEvent>(&mut huge).await.is_err());
        });
    }
}
