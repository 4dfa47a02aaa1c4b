//! The codec of Cairn's public services (`cairn.v1`): prost's, with small per-call buffers.
//!
//! tonic allocates each call's encode and decode buffers up front at 8 KiB apiece, and a
//! server-streaming call keeps its encode buffer for as long as it lives: for an idle watch
//! that buffer was most of what it cost the server. Buffers start at [`BUFFER_BYTES`] and grow
//! to fit larger messages.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial size of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 128;
/// Encoded bytes after which a stream hands what it has to the connection (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost encoding with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
