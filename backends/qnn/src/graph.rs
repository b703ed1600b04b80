//! Building, finalizing and executing QNN graphs.
//!
//! A [`GraphBuilder`] creates a graph's tensors and nodes in its context;
//! every node is validated by the backend first (`backendValidateOpConfig`,
//! stricter than the simulator's own checks). [`Graph`] runs the finalized
//! graph over caller-owned client buffers, so inputs and outputs are read
//! and written in place.

use crate::ffi::{self, entry, Handle};
use crate::runtime::Context;
use crate::{Error, Result};
use std::ffi::CString;
use std::sync::Arc;

/// The package of Qualcomm's built-in ops.
const OP_PACKAGE: &std::ffi::CStr = c"qti.aisw";

/// Element types of graph tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum DataType {
    F32,
    F16,
    I32,
    U32,
    Bool,
    /// Signed 8-bit values, one scale per slice along `axis`; `bitwidth` 4
    /// stores 4-bit values (in -8..=7) in the 8-bit container.
    SFixed8PerAxis {
        axis: i32,
        bitwidth: u32,
        scales: Vec<f32>,
    },
}

impl DataType {
    fn code(&self) -> u32 {
        match self {
            DataType::F32 => ffi::data_type::FLOAT_32,
            DataType::F16 => ffi::data_type::FLOAT_16,
            DataType::I32 => ffi::data_type::INT_32,
            DataType::U32 => ffi::data_type::UINT_32,
            DataType::Bool => ffi::data_type::BOOL_8,
            DataType::SFixed8PerAxis { .. } => ffi::data_type::SFIXED_POINT_8,
        }
    }

    /// Bytes per element.
    pub fn size(&self) -> usize {
        match self {
            DataType::F32 | DataType::I32 | DataType::U32 => 4,
            DataType::F16 => 2,
            DataType::Bool | DataType::SFixed8PerAxis { .. } => 1,
        }
    }
}

/// What a tensor is to the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Written by the caller before each execution.
    Input,
    /// Read by the caller after each execution.
    Output,
    /// Lives only inside the graph.
    Native,
    /// Constant data given at creation (weights, op parameters).
    Static,
}

/// A tensor created in a graph (an index into its builder's list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorRef(usize);

/// An input or output of a finalized graph: what executing it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct IoTensor {
    /// The id the library gave the tensor (a reloaded graph needs it).
    pub id: u32,
    pub name: String,
    pub data_type: DataType,
    pub dims: Vec<u32>,
}

impl IoTensor {
    pub fn bytes(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product::<usize>() * self.data_type.size()
    }
}

/// A scalar op parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Bool(bool),
    U32(u32),
    I32(i32),
    F32(f32),
}

/// A named op parameter: a scalar or a static tensor.
#[derive(Clone, Debug)]
pub enum Param {
    Scalar(&'static str, Scalar),
    Tensor(&'static str, TensorRef),
}

/// Storage that must outlive the graph's construction (names, dimensions,
/// quantization scales, static data), kept by address-stable boxes.
struct Created {
    tensor: ffi::Tensor,
    _name: CString,
    dims: Box<[u32]>,
    _scales: Option<Box<[ffi::ScaleOffset]>>,
    _bw_scales: Option<Box<[f32]>>,
    /// Static data: op configs that name the tensor point at it again
    /// (validation reads parameter tensors through it).
    _data: Option<Box<[u8]>>,
    data_type: DataType,
    role: Role,
    name: String,
}

/// Builds one graph in a context.
pub struct GraphBuilder {
    context: Arc<Context>,
    handle: Handle,
    name: String,
    tensors: Vec<Created>,
    nodes: usize,
}

// SAFETY: the graph handle is used from one thread at a time (the builder
// is not Sync), which the library allows.
unsafe impl Send for GraphBuilder {}

impl GraphBuilder {
    /// Creates an empty graph named `name` (unique in its context), with
    /// float math in fp16 (the HTP's native float precision).
    pub fn new(context: &Arc<Context>, name: &str) -> Result<GraphBuilder> {
        let library = &context.runtime.library;
        // SAFETY: entry GRAPH_CREATE has this signature.
        let create: ffi::GraphCreate = unsafe { library.entry(entry::GRAPH_CREATE)? };
        let c_name = c_string(name)?;
        let mut precision = ffi::HtpGraphCustomConfig {
            option: ffi::HTP_GRAPH_OPTION_PRECISION,
            value: [0; 6],
        };
        precision.value[0] = u64::from(ffi::PRECISION_FLOAT16);
        let config = ffi::Config {
            option: ffi::CONFIG_OPTION_CUSTOM,
            custom: (&precision as *const ffi::HtpGraphCustomConfig).cast(),
        };
        let configs = [&config as *const ffi::Config, std::ptr::null()];
        let mut handle = std::ptr::null_mut();
        // SAFETY: a live context, a NUL-terminated name, a null-terminated
        // config list that outlives the call, a valid out-pointer.
        library.check("graphCreate", unsafe {
            create(
                context.handle,
                c_name.as_ptr(),
                configs.as_ptr(),
                &mut handle,
            )
        })?;
        Ok(GraphBuilder {
            context: context.clone(),
            handle,
            name: name.to_string(),
            tensors: Vec::new(),
            nodes: 0,
        })
    }

    /// Creates a tensor. `data` is required for [`Role::Static`] tensors
    /// (the library copies it) and must hold every element.
    pub fn tensor(
        &mut self,
        name: &str,
        role: Role,
        data_type: DataType,
        dims: &[usize],
        data: Option<&[u8]>,
    ) -> Result<TensorRef> {
        let library = self.context.runtime.library.clone();
        let elements: usize = dims.iter().product();
        let bytes = elements * data_type.size();
        let bad = |message: String| Error::BadTensor {
            graph: self.name.clone(),
            tensor: name.to_string(),
            message,
        };
        match (role, data) {
            (Role::Static, Some(d)) if d.len() != bytes => {
                return Err(bad(format!("{} bytes of data for {bytes}", d.len())))
            }
            (Role::Static, None) => return Err(bad("a static tensor needs data".into())),
            (Role::Input | Role::Output | Role::Native, Some(_)) => {
                return Err(bad("only static tensors take data".into()))
            }
            _ => {}
        }
        let mut dims_u32 = dims
            .iter()
            .map(|&d| u32::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
            .collect::<Result<Box<[u32]>>>()?;
        let size = u32::try_from(bytes).map_err(|_| bad(format!("{bytes} bytes is too large")))?;
        let c_name = c_string(&format!("{}_{}", name, self.tensors.len()))?;
        let mut scales = None;
        let mut bw_scales = None;
        let quantize_params = match &data_type {
            DataType::SFixed8PerAxis {
                axis,
                bitwidth,
                scales: s,
            } => {
                if *bitwidth == 8 {
                    let mut boxed: Box<[ffi::ScaleOffset]> = s
                        .iter()
                        .map(|&scale| ffi::ScaleOffset { scale, offset: 0 })
                        .collect();
                    let params = ffi::QuantizeParams {
                        definition: ffi::quant::DEFINITION_DEFINED,
                        encoding: ffi::quant::ENCODING_AXIS_SCALE_OFFSET,
                        params: ffi::QuantizeUnion {
                            axis_scale_offset: ffi::AxisScaleOffset {
                                axis: *axis,
                                count: s.len() as u32,
                                scale_offsets: boxed.as_mut_ptr(),
                            },
                        },
                    };
                    scales = Some(boxed);
                    params
                } else {
                    let mut boxed: Box<[f32]> = s.clone().into_boxed_slice();
                    let params = ffi::QuantizeParams {
                        definition: ffi::quant::DEFINITION_DEFINED,
                        encoding: ffi::quant::ENCODING_BW_AXIS_SCALE_OFFSET,
                        params: ffi::QuantizeUnion {
                            bw_axis_scale_offset: ffi::BwAxisScaleOffset {
                                bitwidth: *bitwidth,
                                axis: *axis,
                                count: s.len() as u32,
                                scales: boxed.as_mut_ptr(),
                                offsets: std::ptr::null_mut(),
                            },
                        },
                    };
                    bw_scales = Some(boxed);
                    params
                }
            }
            _ => ffi::QuantizeParams::NONE,
        };
        let tensor_type = match role {
            Role::Input => ffi::tensor_type::APP_WRITE,
            Role::Output => ffi::tensor_type::APP_READ,
            Role::Native => ffi::tensor_type::NATIVE,
            Role::Static => ffi::tensor_type::STATIC,
        };
        let mut data: Option<Box<[u8]>> = data.map(Box::from);
        let client_buffer = match &mut data {
            Some(d) => ffi::ClientBuffer {
                data: d.as_mut_ptr().cast(),
                size,
            },
            None => ffi::ClientBuffer {
                data: std::ptr::null_mut(),
                size: 0,
            },
        };
        let mut tensor = ffi::Tensor {
            version: 1,
            v1: ffi::TensorV1 {
                id: 0,
                name: c_name.as_ptr(),
                tensor_type,
                data_format: 0,
                data_type: data_type.code(),
                quantize_params,
                rank: dims_u32.len() as u32,
                dimensions: dims_u32.as_mut_ptr(),
                mem_type: 0,
                client_buffer,
            },
            v2_tail: [0; 3],
        };
        // SAFETY: entry TENSOR_CREATE_GRAPH_TENSOR has this signature.
        let create: ffi::TensorCreateGraphTensor =
            unsafe { library.entry(entry::TENSOR_CREATE_GRAPH_TENSOR)? };
        // SAFETY: every pointer in `tensor` is live for the call (and for
        // the builder's life: the boxes move into `self.tensors`).
        library.check("tensorCreateGraphTensor", unsafe {
            create(self.handle, &mut tensor)
        })?;
        self.tensors.push(Created {
            tensor,
            _name: c_name,
            dims: dims_u32,
            _scales: scales,
            _bw_scales: bw_scales,
            _data: data,
            data_type,
            role,
            name: name.to_string(),
        });
        Ok(TensorRef(self.tensors.len() - 1))
    }

    /// A static uint32 tensor (axes and permutation parameters).
    pub fn u32_param_tensor(&mut self, name: &str, values: &[u32]) -> Result<TensorRef> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(
            name,
            Role::Static,
            DataType::U32,
            &[values.len()],
            Some(&bytes),
        )
    }

    fn created(&self, t: TensorRef) -> Result<&Created> {
        self.tensors.get(t.0).ok_or_else(|| Error::BadTensor {
            graph: self.name.clone(),
            tensor: format!("#{}", t.0),
            message: "not a tensor of this graph".into(),
        })
    }

    /// Validates an op with the backend, then adds it to the graph.
    pub fn node(
        &mut self,
        op_type: &str,
        inputs: &[TensorRef],
        outputs: &[TensorRef],
        params: &[Param],
    ) -> Result<()> {
        let library = self.context.runtime.library.clone();
        let mut input_structs = inputs
            .iter()
            .map(|&t| Ok(self.created(t)?.tensor))
            .collect::<Result<Vec<_>>>()?;
        let mut output_structs = outputs
            .iter()
            .map(|&t| Ok(self.created(t)?.tensor))
            .collect::<Result<Vec<_>>>()?;
        let names = params
            .iter()
            .map(|p| match p {
                Param::Scalar(n, _) | Param::Tensor(n, _) => c_string(n),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut param_structs = Vec::with_capacity(params.len());
        for (param, name) in params.iter().zip(&names) {
            let value = match *param {
                Param::Scalar(_, scalar) => {
                    let (data_type, value) = match scalar {
                        Scalar::Bool(b) => (ffi::data_type::BOOL_8, u64::from(b)),
                        Scalar::U32(v) => (ffi::data_type::UINT_32, u64::from(v)),
                        Scalar::I32(v) => (ffi::data_type::INT_32, u64::from(v as u32)),
                        Scalar::F32(v) => (ffi::data_type::FLOAT_32, u64::from(v.to_bits())),
                    };
                    ffi::ParamValue {
                        scalar: ffi::Scalar { data_type, value },
                    }
                }
                Param::Tensor(_, t) => ffi::ParamValue {
                    tensor: self.created(t)?.tensor,
                },
            };
            param_structs.push(ffi::Param {
                param_type: match param {
                    Param::Scalar(..) => ffi::PARAM_SCALAR,
                    Param::Tensor(..) => ffi::PARAM_TENSOR,
                },
                name: name.as_ptr(),
                value,
            });
        }
        let node_name = c_string(&format!("{op_type}_{}", self.nodes))?;
        let type_name = c_string(op_type)?;
        let op = ffi::OpConfig {
            version: 1,
            v1: ffi::OpConfigV1 {
                name: node_name.as_ptr(),
                package_name: OP_PACKAGE.as_ptr(),
                type_name: type_name.as_ptr(),
                num_params: param_structs.len() as u32,
                params: param_structs.as_mut_ptr(),
                num_inputs: input_structs.len() as u32,
                inputs: input_structs.as_mut_ptr(),
                num_outputs: output_structs.len() as u32,
                outputs: output_structs.as_mut_ptr(),
            },
        };
        // SAFETY: entries BACKEND_VALIDATE_OP_CONFIG and GRAPH_ADD_NODE have
        // these signatures.
        let (validate, add): (ffi::BackendValidateOpConfig, ffi::GraphAddNode) = unsafe {
            (
                library.entry(entry::BACKEND_VALIDATE_OP_CONFIG)?,
                library.entry(entry::GRAPH_ADD_NODE)?,
            )
        };
        // SAFETY: every pointer in `op` (names, params, tensors and what
        // they point to) is live for both calls.
        library.check("backendValidateOpConfig", unsafe {
            validate(self.context.runtime.backend_handle(), op)
        })?;
        // SAFETY: as above.
        library.check("graphAddNode", unsafe { add(self.handle, op) })?;
        self.nodes += 1;
        Ok(())
    }

    /// Finalizes the graph (the library compiles it for the SoC).
    pub fn finalize(self) -> Result<Graph> {
        let library = self.context.runtime.library.clone();
        // SAFETY: entry GRAPH_FINALIZE has this signature.
        let finalize: ffi::GraphFinalize = unsafe { library.entry(entry::GRAPH_FINALIZE)? };
        // SAFETY: a live graph; no profile or signal.
        library.check("graphFinalize", unsafe {
            finalize(self.handle, std::ptr::null_mut(), std::ptr::null_mut())
        })?;
        let io = |role| -> Vec<IoTensor> {
            self.tensors
                .iter()
                .filter(|t| t.role == role)
                .map(|t| IoTensor {
                    id: t.tensor.v1.id,
                    name: t.name.clone(),
                    data_type: t.data_type.clone(),
                    dims: t.dims.to_vec(),
                })
                .collect()
        };
        Graph::new(
            self.context.clone(),
            self.handle,
            self.name.clone(),
            io(Role::Input),
            io(Role::Output),
        )
    }
}

/// A finalized graph, ready to execute; it lives as long as its context.
pub struct Graph {
    context: Arc<Context>,
    handle: Handle,
    name: String,
    inputs: Vec<IoTensor>,
    outputs: Vec<IoTensor>,
    /// The execution structs, prepared once; only buffers change per run.
    input_structs: Vec<ffi::Tensor>,
    output_structs: Vec<ffi::Tensor>,
    _names: Vec<CString>,
    _dims: Vec<Box<[u32]>>,
}

// SAFETY: the structs' pointers point into the graph's own boxed storage;
// a graph executes from one thread at a time (`execute` takes `&mut self`).
unsafe impl Send for Graph {}

impl Graph {
    fn new(
        context: Arc<Context>,
        handle: Handle,
        name: String,
        inputs: Vec<IoTensor>,
        outputs: Vec<IoTensor>,
    ) -> Result<Graph> {
        let mut names = Vec::new();
        let mut dims = Vec::new();
        let mut structs = |list: &[IoTensor], tensor_type: u32| -> Result<Vec<ffi::Tensor>> {
            let mut out = Vec::with_capacity(list.len());
            for t in list {
                let c_name = c_string(&t.name)?;
                let mut d: Box<[u32]> = t.dims.clone().into_boxed_slice();
                out.push(ffi::Tensor {
                    version: 1,
                    v1: ffi::TensorV1 {
                        id: t.id,
                        name: c_name.as_ptr(),
                        tensor_type,
                        data_format: 0,
                        data_type: t.data_type.code(),
                        quantize_params: ffi::QuantizeParams::NONE,
                        rank: d.len() as u32,
                        dimensions: d.as_mut_ptr(),
                        mem_type: 0,
                        client_buffer: ffi::ClientBuffer {
                            data: std::ptr::null_mut(),
                            size: 0,
                        },
                    },
                    v2_tail: [0; 3],
                });
                names.push(c_name);
                dims.push(d);
            }
            Ok(out)
        };
        let input_structs = structs(&inputs, ffi::tensor_type::APP_WRITE)?;
        let output_structs = structs(&outputs, ffi::tensor_type::APP_READ)?;
        Ok(Graph {
            context,
            handle,
            name,
            inputs,
            outputs,
            input_structs,
            output_structs,
            _names: names,
            _dims: dims,
        })
    }

    /// Finds a finalized graph in a context loaded from a binary. The
    /// inputs and outputs are those [`Graph::inputs`] / [`Graph::outputs`]
    /// reported when it was built (their ids included).
    pub fn retrieve(
        context: &Arc<Context>,
        name: &str,
        inputs: Vec<IoTensor>,
        outputs: Vec<IoTensor>,
    ) -> Result<Graph> {
        let library = &context.runtime.library;
        // SAFETY: entry GRAPH_RETRIEVE has this signature.
        let retrieve: ffi::GraphRetrieve = unsafe { library.entry(entry::GRAPH_RETRIEVE)? };
        let c_name = c_string(name)?;
        let mut handle = std::ptr::null_mut();
        // SAFETY: a live context, a NUL-terminated name, a valid out-pointer.
        library.check("graphRetrieve", unsafe {
            retrieve(context.handle, c_name.as_ptr(), &mut handle)
        })?;
        Graph::new(context.clone(), handle, name.to_string(), inputs, outputs)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn inputs(&self) -> &[IoTensor] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[IoTensor] {
        &self.outputs
    }

    /// Executes over caller-owned buffers, one per input and output in
    /// order, each exactly the tensor's size.
    pub fn execute(&mut self, inputs: &[&[u8]], outputs: &mut [&mut [u8]]) -> Result<()> {
        self.check_sizes(
            inputs.iter().map(|b| b.len()),
            outputs.iter().map(|b| b.len()),
        )?;
        let inputs: Vec<*const u8> = inputs.iter().map(|b| b.as_ptr()).collect();
        let outputs: Vec<*mut u8> = outputs.iter_mut().map(|b| b.as_mut_ptr()).collect();
        // SAFETY: every buffer is a live slice of the tensor's exact size,
        // borrowed for the call (outputs mutably).
        unsafe { self.execute_raw(&inputs, &outputs) }
    }

    fn check_sizes(
        &self,
        inputs: impl ExactSizeIterator<Item = usize>,
        outputs: impl ExactSizeIterator<Item = usize>,
    ) -> Result<()> {
        let bad = |message: String| Error::BadTensor {
            graph: self.name.clone(),
            tensor: String::new(),
            message,
        };
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return Err(bad(format!(
                "{} inputs and {} outputs given for {} and {}",
                inputs.len(),
                outputs.len(),
                self.inputs.len(),
                self.outputs.len()
            )));
        }
        for (len, t) in inputs.zip(&self.inputs).chain(outputs.zip(&self.outputs)) {
            if len != t.bytes() {
                return Err(Error::BadTensor {
                    graph: self.name.clone(),
                    tensor: t.name.clone(),
                    message: format!("a buffer of {len} bytes for {}", t.bytes()),
                });
            }
        }
        Ok(())
    }

    /// Executes over raw buffers: the zero-copy path, where buffers are
    /// views into a session's memory.
    ///
    /// # Safety
    /// `inputs[i]` must be valid for reads and `outputs[i]` for writes of
    /// the byte size of the matching tensor ([`IoTensor::bytes`]) for the
    /// whole call, and no output may overlap another buffer.
    pub unsafe fn execute_raw(&mut self, inputs: &[*const u8], outputs: &[*mut u8]) -> Result<()> {
        if inputs.len() != self.inputs.len() || outputs.len() != self.outputs.len() {
            return Err(Error::BadTensor {
                graph: self.name.clone(),
                tensor: String::new(),
                message: format!(
                    "{} inputs and {} outputs given for {} and {}",
                    inputs.len(),
                    outputs.len(),
                    self.inputs.len(),
                    self.outputs.len()
                ),
            });
        }
        for ((s, t), &p) in self.input_structs.iter_mut().zip(&self.inputs).zip(inputs) {
            s.v1.client_buffer = ffi::ClientBuffer {
                data: p.cast_mut().cast(),
                size: t.bytes() as u32,
            };
        }
        for ((s, t), &p) in self
            .output_structs
            .iter_mut()
            .zip(&self.outputs)
            .zip(outputs)
        {
            s.v1.client_buffer = ffi::ClientBuffer {
                data: p.cast(),
                size: t.bytes() as u32,
            };
        }
        let library = &self.context.runtime.library;
        // SAFETY: entry GRAPH_EXECUTE has this signature.
        let execute: ffi::GraphExecute = unsafe { library.entry(entry::GRAPH_EXECUTE)? };
        // SAFETY: the structs point at live names, dims and the caller's
        // buffers (the caller's promise); no profile or signal.
        let status = unsafe {
            execute(
                self.handle,
                self.input_structs.as_ptr(),
                self.input_structs.len() as u32,
                self.output_structs.as_mut_ptr(),
                self.output_structs.len() as u32,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        library.check("graphExecute", status)
    }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::BadName {
        name: s.to_string(),
    })
}
