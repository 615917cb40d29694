//! A fake daemon: an in-memory host good enough to drive the protocol.
#![allow(dead_code)]

use mdraid_rpc::errno::{EEXIST, ENODEV};
use mdraid_rpc::params::*;
use mdraid_rpc::results::*;
use mdraid_rpc::types::*;
use mdraid_rpc::{reply, Call, Host, Method, RpcError};
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub struct Bdev {
    pub name: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub product: &'static str,
    pub uuid: Uuid,
}

#[derive(Default)]
pub struct FakeDaemon {
    pub bdevs: Vec<Bdev>,
    pub mallocs: Vec<BdevMallocCreate>,
    pub arrays: Vec<BdevMdraidCreate>,
    pub exports: Vec<MdraidNbdExportAdd>,
    pub calls: Vec<Call>,
    /// false: behave like the SPDK host (no NBD server, no member bdevs).
    pub spdk_like: bool,
    pub next_malloc: u32,
}

impl FakeDaemon {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, name: &str) -> Option<&Bdev> {
        self.bdevs.iter().find(|b| b.name == name)
    }

    fn uuid(n: usize) -> Uuid {
        let mut u = [0u8; 16];
        u[15] = n as u8;
        u[0] = 0xab;
        Uuid(u)
    }

    fn info(b: &Bdev) -> BdevInfo {
        BdevInfo {
            name: b.name.clone(),
            aliases: vec![],
            product_name: b.product.into(),
            block_size: b.block_size,
            num_blocks: b.num_blocks,
            preferred_write_alignment: 0,
            preferred_write_granularity: 0,
            optimal_write_size: 0,
            preferred_unmap_alignment: 0,
            preferred_unmap_granularity: 0,
            uuid: b.uuid,
            assigned_rate_limits: RateLimits::default(),
            claimed: false,
            claim_type: None,
            zoned: false,
            supported_io_types: SupportedIoTypes {
                read: true,
                write: true,
                flush: true,
                ..Default::default()
            },
            driver_specific: json!({}),
        }
    }
}

impl Host for FakeDaemon {
    fn serves(&self, method: Method) -> bool {
        if self.spdk_like {
            method.name().starts_with("bdev_mdraid_")
        } else {
            true
        }
    }

    fn call(&mut self, call: Call) -> Result<Value, RpcError> {
        self.calls.push(call.clone());
        match call {
            Call::BdevMallocCreate(p) => {
                let name = match &p.name {
                    Some(n) => n.to_string(),
                    None => {
                        self.next_malloc += 1;
                        format!("Malloc{}", self.next_malloc - 1)
                    }
                };
                if self.find(&name).is_some() {
                    return Err(RpcError::from_errno(EEXIST));
                }
                let uuid = p.uuid.unwrap_or(Self::uuid(self.bdevs.len()));
                self.bdevs.push(Bdev {
                    name: name.clone(),
                    block_size: p.block_size,
                    num_blocks: p.num_blocks,
                    product: "Malloc disk",
                    uuid,
                });
                let mut saved = p.clone();
                saved.name = Some(BdevName::new(name.clone()).unwrap());
                saved.uuid = Some(uuid);
                self.mallocs.push(saved);
                Ok(json!(name))
            }
            Call::BdevMallocDelete(p) => {
                let before = self.bdevs.len();
                self.bdevs.retain(|b| b.name != p.name.as_str());
                self.mallocs
                    .retain(|m| m.name.as_ref().map(|n| n.as_str()) != Some(p.name.as_str()));
                if self.bdevs.len() == before {
                    return Err(RpcError::from_errno(ENODEV));
                }
                Ok(json!(true))
            }
            Call::BdevMdraidCreate(p) => {
                if self.find(p.name.as_str()).is_some() {
                    return Err(RpcError::errno(
                        EEXIST,
                        format!("Failed to create RAID bdev {}: File exists", p.name),
                    ));
                }
                for (i, m) in p.base_bdevs.iter().enumerate() {
                    if self.find(m.as_str()).is_none() {
                        return Err(RpcError::invalid_field(
                            "bdev_mdraid_create",
                            &format!("base_bdevs[{i}]"),
                            format!("no bdev named `{m}`"),
                        ));
                    }
                }
                let bs = self.find(p.base_bdevs.0[0].as_str()).unwrap().block_size;
                let nb = p
                    .base_bdevs
                    .iter()
                    .map(|m| self.find(m.as_str()).unwrap().num_blocks)
                    .min()
                    .unwrap();
                let uuid = p.uuid.unwrap_or(Self::uuid(100 + self.arrays.len()));
                self.bdevs.push(Bdev {
                    name: p.name.to_string(),
                    block_size: bs,
                    num_blocks: nb,
                    product: "mdraid",
                    uuid,
                });
                let mut saved = p.clone();
                saved.uuid = Some(uuid);
                self.arrays.push(saved);
                Ok(json!(true))
            }
            Call::BdevMdraidDelete(p) => {
                let before = self.arrays.len();
                self.arrays.retain(|a| a.name != p.name);
                if self.arrays.len() == before {
                    return Err(RpcError::errno(
                        ENODEV,
                        format!("raid bdev {} not found", p.name),
                    ));
                }
                self.bdevs.retain(|b| b.name != p.name.as_str());
                Ok(json!(true))
            }
            Call::BdevMdraidGetBdevs(p) => {
                let list: Vec<MdraidBdevInfo> = self
                    .arrays
                    .iter()
                    .filter(|a| p.name.as_ref().is_none_or(|n| *n == a.name))
                    .map(|a| MdraidBdevInfo {
                        name: a.name.to_string(),
                        uuid: a.uuid.unwrap(),
                        strip_size_kb: a.strip_size_kb.unwrap_or(0),
                        state: RaidState::Online,
                        raid_level: a.raid_level,
                        superblock: a.superblock,
                        num_base_bdevs: a.base_bdevs.len() as u32,
                        num_base_bdevs_discovered: a.base_bdevs.len() as u32,
                        num_base_bdevs_operational: a.base_bdevs.len() as u32,
                        process: None,
                        base_bdevs_list: a
                            .base_bdevs
                            .iter()
                            .enumerate()
                            .map(|(i, m)| MdraidBaseBdevInfo {
                                name: Some(m.to_string()),
                                uuid: Self::uuid(i),
                                is_configured: true,
                                data_offset: 2048,
                                data_size: 1000,
                                role: Some(i as u32),
                                state: Some("in_sync".into()),
                                write_mostly: a.write_mostly.contains(m.as_str()),
                                io: None,
                            })
                            .collect(),
                        layout: a.layout.map(|l| l.to_string()),
                        events: 1,
                        array_state: Some("clean".into()),
                        degraded: false,
                        sync_action: Some("idle".into()),
                        mismatch_cnt: None,
                        bitmap: None,
                        write_behind: a.write_behind,
                    })
                    .collect();
                reply(list)
            }
            Call::BdevGetBdevs(p) => {
                let list: Vec<BdevInfo> = match &p.name {
                    Some(n) => vec![Self::info(
                        self.find(n.as_str())
                            .ok_or_else(|| RpcError::from_errno(ENODEV))?,
                    )],
                    None => self.bdevs.iter().map(Self::info).collect(),
                };
                reply(list)
            }
            Call::MdraidNbdExportAdd(p) => {
                if self.find(p.bdev_name.as_str()).is_none() {
                    return Err(RpcError::from_errno(ENODEV));
                }
                let name = p.export_name().to_string();
                self.exports.push(p);
                Ok(json!(name))
            }
            Call::FrameworkWaitInit(_) | Call::BdevWaitForExamine(_) => Ok(json!(true)),
            Call::BdevMdraidSyncAction(_) | Call::BdevErrorInjectError(_) => Ok(json!(true)),
            _ => Err(RpcError::errno(
                mdraid_rpc::errno::ENOTSUP,
                "not in the fake daemon",
            )),
        }
    }

    fn saved_config(&mut self) -> Result<Vec<Call>, RpcError> {
        let mut v: Vec<Call> = self
            .mallocs
            .iter()
            .cloned()
            .map(Call::BdevMallocCreate)
            .collect();
        v.extend(self.arrays.iter().cloned().map(Call::BdevMdraidCreate));
        v.push(Call::BdevWaitForExamine(NoParams {}));
        v.extend(self.exports.iter().cloned().map(Call::MdraidNbdExportAdd));
        Ok(v)
    }
}
