"""A minimal KubeEdge DMI mapper in Python, from edgesync's generated client
(gen-python/v1beta1, made from api/dmi): it serves DeviceMapperService on
--socket, registers with the device manager on --manager (retrying until the
socket appears), prints one line per device or model it is given and reports
values it is told to on stdin ("report NAMESPACE NAME PROPERTY VALUE"). Its
lines are those of edgeclient/dmi/testdata/kubeedgemapper, the Go mapper
built from KubeEdge's own proto.
"""

import argparse
import os
import sys
import threading
import time
from concurrent import futures

import grpc

from v1beta1 import dmi_pb2, dmi_pb2_grpc

_out = threading.Lock()


def say(line):
    with _out:
        print(line, flush=True)


def describe(source, device):
    parts = ["DEVICE", source, device.namespace + "/" + device.name]
    for p in device.spec.properties:
        parts.append(p.name + "=" + p.desired.value)
    for p in device.spec.properties:
        if p.pushMethod.HasField("mqtt"):
            parts.append("mqtt=" + p.pushMethod.mqtt.address + "/" + p.pushMethod.mqtt.topic)
    say(" ".join(parts))


class Mapper(dmi_pb2_grpc.DeviceMapperServiceServicer):
    def RegisterDevice(self, request, context):
        describe("RegisterDevice", request.device)
        return dmi_pb2.RegisterDeviceResponse(deviceName=request.device.name, deviceNamespace=request.device.namespace)

    def UpdateDevice(self, request, context):
        describe("UpdateDevice", request.device)
        return dmi_pb2.UpdateDeviceResponse()

    def RemoveDevice(self, request, context):
        say("REMOVE %s/%s" % (request.deviceNamespace, request.deviceName))
        return dmi_pb2.RemoveDeviceResponse()

    def CreateDeviceModel(self, request, context):
        say("MODEL CreateDeviceModel %s/%s" % (request.model.namespace, request.model.name))
        return dmi_pb2.CreateDeviceModelResponse(deviceModelName=request.model.name, deviceModelNamespace=request.model.namespace)

    def UpdateDeviceModel(self, request, context):
        say("MODEL UpdateDeviceModel %s/%s" % (request.model.namespace, request.model.name))
        return dmi_pb2.UpdateDeviceModelResponse()

    def RemoveDeviceModel(self, request, context):
        say("REMOVE-MODEL %s/%s" % (request.modelNamespace, request.modelName))
        return dmi_pb2.RemoveDeviceModelResponse()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manager", default="/etc/kubeedge/dmi.sock")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--protocol", default="modbus")
    args = ap.parse_args()

    if os.path.exists(args.socket):
        os.remove(args.socket)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    dmi_pb2_grpc.add_DeviceMapperServiceServicer_to_server(Mapper(), server)
    server.add_insecure_port("unix://" + args.socket)
    server.start()

    channel = grpc.insecure_channel("unix://" + args.manager)
    manager = dmi_pb2_grpc.DeviceManagerServiceStub(channel)
    info = dmi_pb2.MapperInfo(name="python-mapper", version="v1.0.0", api_version="v1beta1",
                              protocol=args.protocol, address=args.socket.encode(), state="ok")
    while True:
        try:
            resp = manager.MapperRegister(dmi_pb2.MapperRegisterRequest(withData=True, mapper=info), timeout=1)
            break
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                say("REFUSED %s %s" % (e.code().name, e.details()))
                sys.exit(2)
            time.sleep(0.2)
    for m in resp.modelList:
        say("MODEL register-answer %s/%s" % (m.namespace, m.name))
    for d in resp.deviceList:
        describe("register-answer", d)
    say("REGISTERED %d" % len(resp.deviceList))

    for line in sys.stdin:
        f = line.split()
        if len(f) != 5 or f[0] != "report":
            continue
        ns, name, prop, value = f[1:]
        twin = dmi_pb2.Twin(propertyName=prop,
                            reported=dmi_pb2.TwinProperty(value=value, metadata={"timestamp": str(int(time.time() * 1000)), "type": "int"}),
                            observedDesired=dmi_pb2.TwinProperty(value=""))
        try:
            manager.ReportDeviceStatus(dmi_pb2.ReportDeviceStatusRequest(
                deviceName=name, deviceNamespace=ns, reportedDevice=dmi_pb2.DeviceStatus(twins=[twin])), timeout=5)
            manager.ReportDeviceStates(dmi_pb2.ReportDeviceStatesRequest(deviceName=name, deviceNamespace=ns, state="online"), timeout=5)
        except grpc.RpcError as e:
            say("REFUSED %s %s" % (e.code().name, e.details()))
            continue
        say("REPORTED %s/%s %s=%s" % (ns, name, prop, value))
    server.stop(0)


if __name__ == "__main__":
    main()
