use blockstore::block::CidError;
use cid::CidGeneric;

use super::BlockStore;
use crate::block::{self, Block};
use crate::cid::{self as cids, Cid};

/// Adapts any [`BlockStore`] to the `blockstore` crate's [`blockstore::Blockstore`] trait, so
/// libraries built on it (such as bitswap implementations) use our stores directly.
///
/// Writes through the adapter are verified like every other write: bytes that do not hash to
/// their CID are refused, so the store still holds only verified blocks.
#[derive(Debug, Clone)]
pub struct Compat<S>(pub S);

fn to_cid<const S: usize>(cid: &CidGeneric<S>) -> blockstore::Result<Cid> {
    Cid::try_from(cid.to_bytes())
        .map_err(|e| blockstore::Error::CidError(CidError::InvalidCid(e.to_string())))
}

fn map_store(e: super::Error) -> blockstore::Error {
    match e {
        super::Error::Corrupt { .. } => blockstore::Error::StoredDataError(e.to_string()),
        other => blockstore::Error::FatalDatabaseError(other.to_string()),
    }
}

fn map_block(e: block::Error) -> blockstore::Error {
    match e {
        block::Error::TooLarge { .. } => blockstore::Error::ValueTooLarge,
        block::Error::Cid(cids::Error::UnknownCodec(c)) => {
            blockstore::Error::CidError(CidError::InvalidCidCodec(c))
        }
        block::Error::Cid(cids::Error::UnknownHash(h)) => {
            blockstore::Error::CidError(CidError::InvalidMultihashCode(h, 0x12))
        }
        other => blockstore::Error::CidError(CidError::InvalidDataFormat(other.to_string())),
    }
}

impl<T: BlockStore> blockstore::Blockstore for Compat<T> {
    async fn get<const S: usize>(
        &self,
        cid: &CidGeneric<S>,
    ) -> blockstore::Result<Option<Vec<u8>>> {
        let cid = to_cid(cid)?;
        let block = self.0.get(&cid).await.map_err(map_store)?;
        Ok(block.map(|b| b.data().to_vec()))
    }

    async fn put_keyed<const S: usize>(
        &self,
        cid: &CidGeneric<S>,
        data: &[u8],
    ) -> blockstore::Result<()> {
        let cid = to_cid(cid)?;
        let block = Block::new(cid, data.to_vec()).map_err(map_block)?;
        self.0.put(block).await.map_err(map_store)?;
        Ok(())
    }

    async fn remove<const S: usize>(&self, cid: &CidGeneric<S>) -> blockstore::Result<()> {
        let cid = to_cid(cid)?;
        self.0.delete(&cid).await.map_err(map_store)?;
        Ok(())
    }

    async fn has<const S: usize>(&self, cid: &CidGeneric<S>) -> blockstore::Result<bool> {
        let cid = to_cid(cid)?;
        self.0.has(&cid).await.map_err(map_store)
    }

    async fn close(self) -> blockstore::Result<()> {
        Ok(())
    }
}
