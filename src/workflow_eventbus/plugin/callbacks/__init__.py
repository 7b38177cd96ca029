"""Calls from the plugin to the engine's EngineCallbackService.

``client`` (CallbackClient, what the servicer uses), ``transport`` (the
interface, its settings and ``open_channel``), ``h2`` + ``h2conn`` + ``h2wire``
(the lean HTTP/2 client), ``grpcaio`` (the grpc.aio one), ``errors`` (RpcError).
"""
