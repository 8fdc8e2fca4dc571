package dmi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgesync/edgesync/edgeclient"
	dmiv1beta1 "github.com/edgesync/edgesync/gen/dmi/v1beta1"
	edgesyncv1 "github.com/edgesync/edgesync/gen/edgesync/v1"
)

// mapperInfo is what a mapper said about itself when it registered.
type mapperInfo struct {
	name, version, protocol string
	// socket is the path of the UNIX socket it serves DeviceMapperService
	// on.
	socket string
}

// mapper is one registration of a mapper: the connection to its
// DeviceMapperService and the models it was given. Only the Manager's
// worker calls it, except register, which sets its models before anyone
// else sees it.
type mapper struct {
	info        mapperInfo
	conn        *grpc.ClientConn
	client      dmiv1beta1.DeviceMapperServiceClient
	callTimeout time.Duration
	log         *zap.Logger

	mu     sync.Mutex // guards models
	models map[edgeclient.Key]string
}

// newMapper connects (lazily) to the mapper's socket. Traffic stays on the
// machine, over a UNIX socket only: there is no TLS, as in KubeEdge.
func newMapper(info mapperInfo, callTimeout time.Duration, log *zap.Logger) (*mapper, error) {
	conn, err := grpc.NewClient("unix://"+info.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to mapper socket %s: %w", info.socket, err)
	}
	return &mapper{
		info: info, conn: conn, client: dmiv1beta1.NewDeviceMapperServiceClient(conn), callTimeout: callTimeout,
		log:    log.With(zap.String("mapper", info.name), zap.String("protocol", info.protocol)),
		models: map[edgeclient.Key]string{},
	}, nil
}

func (mp *mapper) close() { _ = mp.conn.Close() }

// call runs one call with the call timeout and says which call of which
// mapper failed.
func (mp *mapper) call(ctx context.Context, what string, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, mp.callTimeout)
	defer cancel()
	if err := fn(ctx); err != nil {
		return fmt.Errorf("mapper %q (protocol %q) at %s: %s: %w", mp.info.name, mp.info.protocol, mp.info.socket, what, err)
	}
	mp.log.Debug("called mapper", zap.String("call", what))
	return nil
}

func (mp *mapper) registerDevice(ctx context.Context, d *dmiv1beta1.Device) error {
	return mp.call(ctx, "RegisterDevice "+d.GetNamespace()+"/"+d.GetName(), func(ctx context.Context) error {
		_, err := mp.client.RegisterDevice(ctx, &dmiv1beta1.RegisterDeviceRequest{Device: d})
		return err
	})
}

func (mp *mapper) updateDevice(ctx context.Context, d *dmiv1beta1.Device) error {
	return mp.call(ctx, "UpdateDevice "+d.GetNamespace()+"/"+d.GetName(), func(ctx context.Context) error {
		_, err := mp.client.UpdateDevice(ctx, &dmiv1beta1.UpdateDeviceRequest{Device: d})
		return err
	})
}

func (mp *mapper) removeDevice(ctx context.Context, key edgeclient.Key) error {
	return mp.call(ctx, "RemoveDevice "+key.Namespace+"/"+key.Name, func(ctx context.Context) error {
		_, err := mp.client.RemoveDevice(ctx, &dmiv1beta1.RemoveDeviceRequest{DeviceName: key.Name, DeviceNamespace: key.Namespace})
		return err
	})
}

// setModels records the models a registration answer gave the mapper,
// with their versions.
func (mp *mapper) setModels(models map[edgeclient.Key]string) {
	mp.mu.Lock()
	defer mp.mu.Unlock()
	mp.models = models
}

// ensureModel gives the mapper model (nil: none), or its new version.
func (mp *mapper) ensureModel(ctx context.Context, model *edgesyncv1.DeviceModel) error {
	if model == nil {
		return nil
	}
	key := modelKey(model.GetMetadata().GetNamespace(), model.GetMetadata().GetName())
	version := model.GetMetadata().GetResourceVersion()
	mp.mu.Lock()
	sent, ok := mp.models[key]
	mp.mu.Unlock()
	if ok && sent == version {
		return nil
	}
	msg := toModel(model)
	var err error
	if ok {
		err = mp.call(ctx, "UpdateDeviceModel "+key.Namespace+"/"+key.Name, func(ctx context.Context) error {
			_, err := mp.client.UpdateDeviceModel(ctx, &dmiv1beta1.UpdateDeviceModelRequest{Model: msg})
			return err
		})
	} else {
		err = mp.call(ctx, "CreateDeviceModel "+key.Namespace+"/"+key.Name, func(ctx context.Context) error {
			_, err := mp.client.CreateDeviceModel(ctx, &dmiv1beta1.CreateDeviceModelRequest{Model: msg})
			return err
		})
	}
	if err != nil {
		return err
	}
	mp.mu.Lock()
	mp.models[key] = version
	mp.mu.Unlock()
	return nil
}

// releaseModels removes from the mapper the models none of its devices
// use any more. A removal that fails is tried again next time.
func (mp *mapper) releaseModels(ctx context.Context, inUse map[edgeclient.Key]bool) {
	mp.mu.Lock()
	var unused []edgeclient.Key
	for k := range mp.models {
		if !inUse[k] {
			unused = append(unused, k)
		}
	}
	mp.mu.Unlock()
	for _, k := range unused {
		err := mp.call(ctx, "RemoveDeviceModel "+k.Namespace+"/"+k.Name, func(ctx context.Context) error {
			_, err := mp.client.RemoveDeviceModel(ctx, &dmiv1beta1.RemoveDeviceModelRequest{ModelName: k.Name, ModelNamespace: k.Namespace})
			return err
		})
		if err != nil {
			mp.log.Info("cannot remove an unused model from its mapper", zap.Error(err))
			continue
		}
		mp.mu.Lock()
		delete(mp.models, k)
		mp.mu.Unlock()
	}
}
