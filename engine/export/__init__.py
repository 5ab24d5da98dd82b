"""Model formats: conversion, runtimes (LiteRT, ONNX Runtime, TensorRT), prediction, comparison."""
