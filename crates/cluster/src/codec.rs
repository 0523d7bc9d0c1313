//! The physical-plan codec of a Quiver cluster: Quiver's operators ([`PitJoinExec`],
//! [`SeqExec`]) as a tagged JSON description, everything else by Ballista's codec (which
//! hands DataFusion's own nodes to DataFusion's). The client, the scheduler and every executor
//! register it, so the same plan is rebuilt on each.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::DataFusionError;
use datafusion::error::Result as DFResult;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use quiver_offline::plan::{PitJoinExec, SeqExec, ViewSpec};
use serde::{Deserialize, Serialize};

/// Prefix of the nodes this codec encodes itself. Ballista's nodes are Protocol Buffers
/// messages, whose first byte is a field tag; no field of theirs is written as `Q`.
const MAGIC: &[u8] = b"QVR1";

/// A Quiver operator as it travels; its inputs travel beside it, encoded by the caller.
#[derive(Serialize, Deserialize)]
enum Node {
    /// [`PitJoinExec`] over (spine, events).
    PitJoin(ViewSpec),
    /// [`SeqExec`] over a scan with these file groups as planned.
    Seq(Vec<(String, i64)>),
}

/// Quiver's operators, then Ballista's, then DataFusion's.
#[derive(Debug, Default)]
pub struct QuiverCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for QuiverCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let Some(body) = buf.strip_prefix(MAGIC) else {
            return self.ballista.try_decode(buf, inputs, ctx, proto_converter);
        };
        let node: Node = serde_json::from_slice(body)
            .map_err(|e| DataFusionError::Internal(format!("Quiver plan node: {e}")))?;
        match (node, inputs) {
            (Node::PitJoin(spec), [spine, events]) => Ok(Arc::new(PitJoinExec::try_new(
                Arc::clone(spine),
                Arc::clone(events),
                Arc::new(spec),
            )?)),
            (Node::Seq(origins), [input]) => Ok(Arc::new(SeqExec::with_origins(
                Arc::clone(input),
                Arc::new(origins),
            ))),
            (_, inputs) => Err(DataFusionError::Internal(format!(
                "Quiver plan node with {} inputs",
                inputs.len()
            ))),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DFResult<()> {
        let ours = if let Some(join) = node.downcast_ref::<PitJoinExec>() {
            Node::PitJoin(join.spec().clone())
        } else if let Some(seq) = node.downcast_ref::<SeqExec>() {
            Node::Seq(seq.origins().as_ref().clone())
        } else {
            return self.ballista.try_encode(node, buf, proto_converter);
        };
        buf.extend_from_slice(MAGIC);
        serde_json::to_writer(&mut *buf, &ours)
            .map_err(|e| DataFusionError::Internal(format!("Quiver plan node: {e}")))
    }
}
