//! The C ABI of the QNN library, written from the layout facts in the
//! project's `qnn-notes.md` (sizes and offsets measured on x86-64 against
//! core API 2.32; newer libraries only append to the function table). No
//! QNN header is used or copied.

use std::ffi::{c_char, c_void};

/// Every QNN call returns a 64-bit handle whose low 16 bits are the code.
pub type QnnErrorHandle = u64;

/// `Qnn_ApiVersion_t`: core API version, then backend API version.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiVersion {
    pub core_major: u32,
    pub core_minor: u32,
    pub core_patch: u32,
    pub backend_major: u32,
    pub backend_minor: u32,
    pub backend_patch: u32,
}

/// Entries of the function table this crate knows, from the start of the
/// table (it never reorders, only grows).
pub const KNOWN_ENTRIES: usize = 71;

/// `QnnInterface_t`: one provider of a backend library.
#[repr(C)]
pub struct Interface {
    pub backend_id: u32,
    pub provider_name: *const c_char,
    pub api_version: ApiVersion,
    pub table: [*const c_void; KNOWN_ENTRIES],
}

// Layout facts (qnn-notes.md: 608 bytes, table at offset 40).
const _: () = assert!(std::mem::size_of::<ApiVersion>() == 24);
const _: () = assert!(std::mem::offset_of!(Interface, backend_id) == 0);
const _: () = assert!(std::mem::offset_of!(Interface, provider_name) == 8);
const _: () = assert!(std::mem::offset_of!(Interface, api_version) == 16);
const _: () = assert!(std::mem::offset_of!(Interface, table) == 40);
const _: () = assert!(std::mem::size_of::<Interface>() == 608);

/// `QnnInterface_getProviders(const QnnInterface_t*** providers, uint32_t* count)`.
pub type GetProviders = unsafe extern "C" fn(
    providers: *mut *const *const Interface,
    count: *mut u32,
) -> QnnErrorHandle;

/// Positions in the function table.
pub mod entry {
    pub const BACKEND_CREATE: usize = 1;
    pub const BACKEND_GET_API_VERSION: usize = 3;
    pub const BACKEND_GET_BUILD_ID: usize = 4;
    pub const BACKEND_VALIDATE_OP_CONFIG: usize = 7;
    pub const BACKEND_FREE: usize = 8;
    pub const CONTEXT_CREATE: usize = 9;
    pub const CONTEXT_GET_BINARY_SIZE: usize = 11;
    pub const CONTEXT_GET_BINARY: usize = 12;
    pub const CONTEXT_CREATE_FROM_BINARY: usize = 13;
    pub const CONTEXT_FREE: usize = 14;
    pub const GRAPH_CREATE: usize = 15;
    pub const GRAPH_ADD_NODE: usize = 18;
    pub const GRAPH_FINALIZE: usize = 19;
    pub const GRAPH_RETRIEVE: usize = 20;
    pub const GRAPH_EXECUTE: usize = 21;
    pub const TENSOR_CREATE_GRAPH_TENSOR: usize = 24;
    pub const LOG_CREATE: usize = 25;
    pub const LOG_FREE: usize = 27;
    pub const DEVICE_CREATE: usize = 40;
    pub const DEVICE_FREE: usize = 43;
    pub const ERROR_GET_MESSAGE: usize = 48;
}

/// `backendCreate(log, const QnnBackend_Config_t** config, Qnn_BackendHandle_t* backend)`.
pub type BackendCreate = unsafe extern "C" fn(
    log: *mut c_void,
    config: *const *const c_void,
    backend: *mut *mut c_void,
) -> QnnErrorHandle;

/// `backendGetApiVersion(Qnn_ApiVersion_t* version)`.
pub type BackendGetApiVersion = unsafe extern "C" fn(version: *mut ApiVersion) -> QnnErrorHandle;

/// `backendGetBuildId(const char** id)`.
pub type BackendGetBuildId = unsafe extern "C" fn(id: *mut *const c_char) -> QnnErrorHandle;

/// `backendFree(Qnn_BackendHandle_t backend)`.
pub type BackendFree = unsafe extern "C" fn(backend: *mut c_void) -> QnnErrorHandle;

/// An opaque QNN handle (backend, device, context, graph, log, profile).
pub type Handle = *mut c_void;

/// `Qnn_DataType_t` values.
pub mod data_type {
    pub const INT_32: u32 = 0x0032;
    pub const UINT_32: u32 = 0x0132;
    pub const FLOAT_16: u32 = 0x0216;
    pub const FLOAT_32: u32 = 0x0232;
    pub const SFIXED_POINT_8: u32 = 0x0308;
    pub const UFIXED_POINT_8: u32 = 0x0408;
    pub const UFIXED_POINT_16: u32 = 0x0416;
    pub const BOOL_8: u32 = 0x0508;
}

/// `Qnn_TensorType_t` values.
pub mod tensor_type {
    pub const APP_WRITE: u32 = 0;
    pub const APP_READ: u32 = 1;
    pub const NATIVE: u32 = 3;
    pub const STATIC: u32 = 4;
}

/// `Qnn_Definition_t` and `Qnn_QuantizationEncoding_t` values.
pub mod quant {
    pub const DEFINITION_DEFINED: u32 = 1;
    pub const DEFINITION_UNDEFINED: u32 = 0x7fff_ffff;
    pub const ENCODING_SCALE_OFFSET: u32 = 0;
    pub const ENCODING_AXIS_SCALE_OFFSET: u32 = 1;
    pub const ENCODING_BW_AXIS_SCALE_OFFSET: u32 = 3;
    pub const ENCODING_UNDEFINED: u32 = 0x7fff_ffff;
}

/// `Qnn_LogLevel_t` values.
pub mod log_level {
    pub const ERROR: u32 = 1;
    pub const WARN: u32 = 2;
    pub const INFO: u32 = 3;
    pub const VERBOSE: u32 = 4;
}

/// `Qnn_ScaleOffset_t`: `float = (q + offset) · scale`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScaleOffset {
    pub scale: f32,
    pub offset: i32,
}

/// `Qnn_AxisScaleOffset_t`: one scale/offset per slice along `axis`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AxisScaleOffset {
    pub axis: i32,
    pub count: u32,
    pub scale_offsets: *mut ScaleOffset,
}

/// `Qnn_BwAxisScaleOffset_t`: per-axis scales of a narrower bit width
/// stored in an 8-bit container.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BwAxisScaleOffset {
    pub bitwidth: u32,
    pub axis: i32,
    pub count: u32,
    pub scales: *mut f32,
    pub offsets: *mut i32,
}

/// `Qnn_QuantizeParams_t`: definition, encoding, then the encoding's
/// parameters in a 32-byte union.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QuantizeParams {
    pub definition: u32,
    pub encoding: u32,
    pub params: QuantizeUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union QuantizeUnion {
    pub scale_offset: ScaleOffset,
    pub axis_scale_offset: AxisScaleOffset,
    pub bw_axis_scale_offset: BwAxisScaleOffset,
    pub raw: [u64; 4],
}

impl QuantizeParams {
    /// No quantization (float and integer tensors).
    pub const NONE: QuantizeParams = QuantizeParams {
        definition: quant::DEFINITION_UNDEFINED,
        encoding: quant::ENCODING_UNDEFINED,
        params: QuantizeUnion { raw: [0; 4] },
    };
}

/// `Qnn_ClientBuffer_t`: memory the client owns for one execution.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClientBuffer {
    pub data: *mut c_void,
    pub size: u32,
}

/// `Qnn_TensorV1_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TensorV1 {
    pub id: u32,
    pub name: *const c_char,
    pub tensor_type: u32,
    pub data_format: u32,
    pub data_type: u32,
    pub quantize_params: QuantizeParams,
    pub rank: u32,
    pub dimensions: *mut u32,
    pub mem_type: u32,
    pub client_buffer: ClientBuffer,
}

/// `Qnn_Tensor_t`: a version tag and a union of the tensor versions. Only
/// version 1 is written; the tail keeps the stride of the larger version 2.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tensor {
    pub version: u32,
    pub v1: TensorV1,
    pub v2_tail: [u64; 3],
}

/// `Qnn_Scalar_t`: a data type and an 8-byte value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scalar {
    pub data_type: u32,
    pub value: u64,
}

/// `Qnn_Param_t`: a named scalar or static tensor.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Param {
    pub param_type: u32,
    pub name: *const c_char,
    pub value: ParamValue,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union ParamValue {
    pub scalar: Scalar,
    pub tensor: Tensor,
}

/// `Qnn_ParamType_t` values.
pub const PARAM_SCALAR: u32 = 0;
pub const PARAM_TENSOR: u32 = 1;

/// `Qnn_OpConfigV1_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpConfigV1 {
    pub name: *const c_char,
    pub package_name: *const c_char,
    pub type_name: *const c_char,
    pub num_params: u32,
    pub params: *mut Param,
    pub num_inputs: u32,
    pub inputs: *mut Tensor,
    pub num_outputs: u32,
    pub outputs: *mut Tensor,
}

/// `Qnn_OpConfig_t`, passed by value to validation and addNode.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpConfig {
    pub version: u32,
    pub v1: OpConfigV1,
}

/// A device, graph or context config: an option and a pointer to the
/// backend's custom config (all three share this 16-byte shape).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub option: u32,
    pub custom: *const c_void,
}

/// `Qnn*_ConfigOption_t` value of a backend-specific custom config.
pub const CONFIG_OPTION_CUSTOM: u32 = 0;

/// `QnnHtpDevice_CustomConfig_t`. Its union holds a pointer member since
/// core API 2.44, so the value sits at offset 8 (the layout trap of
/// qnn-notes.md).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HtpDeviceCustomConfig {
    pub option: u32,
    pub value: u64,
}

/// `QnnHtpDevice_ConfigOption_t`: the simulated or real SoC model.
pub const HTP_DEVICE_OPTION_SOC: u32 = 0;

/// `QnnHtpGraph_CustomConfig_t`: an option and a 48-byte union at offset 8.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HtpGraphCustomConfig {
    pub option: u32,
    pub value: [u64; 6],
}

/// `QnnHtpGraph_ConfigOption_t`: the float precision of the graph.
pub const HTP_GRAPH_OPTION_PRECISION: u32 = 2;
/// `Qnn_Precision_t`: fp16.
pub const PRECISION_FLOAT16: u32 = 1;

// Layout facts (qnn-notes.md, "Layouts checked on x86_64").
const _: () = assert!(std::mem::size_of::<ScaleOffset>() == 8);
const _: () = assert!(std::mem::size_of::<QuantizeParams>() == 40);
const _: () = assert!(std::mem::offset_of!(QuantizeParams, params) == 8);
const _: () = assert!(std::mem::size_of::<TensorV1>() == 112);
const _: () = assert!(std::mem::offset_of!(TensorV1, id) == 0);
const _: () = assert!(std::mem::offset_of!(TensorV1, name) == 8);
const _: () = assert!(std::mem::offset_of!(TensorV1, tensor_type) == 16);
const _: () = assert!(std::mem::offset_of!(TensorV1, data_format) == 20);
const _: () = assert!(std::mem::offset_of!(TensorV1, data_type) == 24);
const _: () = assert!(std::mem::offset_of!(TensorV1, quantize_params) == 32);
const _: () = assert!(std::mem::offset_of!(TensorV1, rank) == 72);
const _: () = assert!(std::mem::offset_of!(TensorV1, dimensions) == 80);
const _: () = assert!(std::mem::offset_of!(TensorV1, mem_type) == 88);
const _: () = assert!(std::mem::offset_of!(TensorV1, client_buffer) == 96);
const _: () = assert!(std::mem::size_of::<Tensor>() == 144);
const _: () = assert!(std::mem::offset_of!(Tensor, v1) == 8);
const _: () = assert!(std::mem::size_of::<Scalar>() == 16);
const _: () = assert!(std::mem::offset_of!(Scalar, value) == 8);
const _: () = assert!(std::mem::size_of::<Param>() == 160);
const _: () = assert!(std::mem::offset_of!(Param, value) == 16);
const _: () = assert!(std::mem::size_of::<OpConfigV1>() == 72);
const _: () = assert!(std::mem::size_of::<OpConfig>() == 80);
const _: () = assert!(std::mem::size_of::<Config>() == 16);
const _: () = assert!(std::mem::size_of::<HtpDeviceCustomConfig>() == 16);
const _: () = assert!(std::mem::offset_of!(HtpDeviceCustomConfig, value) == 8);
const _: () = assert!(std::mem::size_of::<HtpGraphCustomConfig>() == 56);
const _: () = assert!(std::mem::offset_of!(HtpGraphCustomConfig, value) == 8);

/// `QnnLog_Callback_t(fmt, level, timestamp, va_list)`. A `va_list`
/// parameter is passed as a pointer on x86-64 and (being a 32-byte struct,
/// passed indirectly) on AArch64.
pub type LogCallback =
    unsafe extern "C" fn(format: *const c_char, level: u32, timestamp: u64, args: *mut c_void);

/// `logCreate(callback, maxLogLevel, Qnn_LogHandle_t*)`.
pub type LogCreate = unsafe extern "C" fn(
    callback: Option<LogCallback>,
    max_level: u32,
    log: *mut Handle,
) -> QnnErrorHandle;
/// `logFree(log)`.
pub type LogFree = unsafe extern "C" fn(log: Handle) -> QnnErrorHandle;
/// `deviceCreate(log, const QnnDevice_Config_t**, Qnn_DeviceHandle_t*)`.
pub type DeviceCreate = unsafe extern "C" fn(
    log: Handle,
    config: *const *const Config,
    device: *mut Handle,
) -> QnnErrorHandle;
/// `deviceFree(device)`.
pub type DeviceFree = unsafe extern "C" fn(device: Handle) -> QnnErrorHandle;
/// `contextCreate(backend, device, const QnnContext_Config_t**, Qnn_ContextHandle_t*)`.
pub type ContextCreate = unsafe extern "C" fn(
    backend: Handle,
    device: Handle,
    config: *const *const Config,
    context: *mut Handle,
) -> QnnErrorHandle;
/// `contextGetBinarySize(context, uint64_t*)`.
pub type ContextGetBinarySize =
    unsafe extern "C" fn(context: Handle, size: *mut u64) -> QnnErrorHandle;
/// `contextGetBinary(context, buffer, bufferSize, uint64_t* written)`.
pub type ContextGetBinary = unsafe extern "C" fn(
    context: Handle,
    buffer: *mut c_void,
    size: u64,
    written: *mut u64,
) -> QnnErrorHandle;
/// `contextCreateFromBinary(backend, device, configs, buffer, size, context*, profile)`.
pub type ContextCreateFromBinary = unsafe extern "C" fn(
    backend: Handle,
    device: Handle,
    config: *const *const Config,
    buffer: *const c_void,
    size: u64,
    context: *mut Handle,
    profile: Handle,
) -> QnnErrorHandle;
/// `contextFree(context, profile)`.
pub type ContextFree = unsafe extern "C" fn(context: Handle, profile: Handle) -> QnnErrorHandle;
/// `graphCreate(context, name, const QnnGraph_Config_t**, Qnn_GraphHandle_t*)`.
pub type GraphCreate = unsafe extern "C" fn(
    context: Handle,
    name: *const c_char,
    config: *const *const Config,
    graph: *mut Handle,
) -> QnnErrorHandle;
/// `graphRetrieve(context, name, Qnn_GraphHandle_t*)`.
pub type GraphRetrieve = unsafe extern "C" fn(
    context: Handle,
    name: *const c_char,
    graph: *mut Handle,
) -> QnnErrorHandle;
/// `tensorCreateGraphTensor(graph, Qnn_Tensor_t*)`: assigns the id.
pub type TensorCreateGraphTensor =
    unsafe extern "C" fn(graph: Handle, tensor: *mut Tensor) -> QnnErrorHandle;
/// `graphAddNode(graph, Qnn_OpConfig_t)`.
pub type GraphAddNode = unsafe extern "C" fn(graph: Handle, op: OpConfig) -> QnnErrorHandle;
/// `backendValidateOpConfig(backend, Qnn_OpConfig_t)`.
pub type BackendValidateOpConfig =
    unsafe extern "C" fn(backend: Handle, op: OpConfig) -> QnnErrorHandle;
/// `graphFinalize(graph, profile, signal)`.
pub type GraphFinalize =
    unsafe extern "C" fn(graph: Handle, profile: Handle, signal: Handle) -> QnnErrorHandle;
/// `graphExecute(graph, inputs, nIn, outputs, nOut, profile, signal)`.
pub type GraphExecute = unsafe extern "C" fn(
    graph: Handle,
    inputs: *const Tensor,
    num_inputs: u32,
    outputs: *mut Tensor,
    num_outputs: u32,
    profile: Handle,
    signal: Handle,
) -> QnnErrorHandle;
/// `errorGetMessage(error, const char**)`.
pub type ErrorGetMessage =
    unsafe extern "C" fn(error: QnnErrorHandle, message: *mut *const c_char) -> QnnErrorHandle;
