"""Quick learnability probe: AdaIN dense training with the project's model, outside the IMP machinery."""
import argparse, time, json
import numpy as np, jax, jax.numpy as jnp, optax, ml_collections
from PIL import Image
from jaxtickets import data as D, evaluate as E
from jaxtickets.models import adain

ap = argparse.ArgumentParser()
ap.add_argument('--name'); ap.add_argument('--steps', type=int, default=500); ap.add_argument('--lr', type=float, default=1e-3)
ap.add_argument('--taps', default='r41'); ap.add_argument('--style_weight', type=float, default=10.0)
ap.add_argument('--train_encoder', type=int, default=1); ap.add_argument('--crop', type=int, default=64)
ap.add_argument('--load', type=int, default=96); ap.add_argument('--width', type=float, default=0.25)
ap.add_argument('--cosine', type=int, default=1); ap.add_argument('--seed', type=int, default=0); ap.add_argument('--batch', type=int, default=4)
ap.add_argument("--plain", type=int, default=0); ap.add_argument("--autoenc", type=int, default=0); ap.add_argument("--pixel", type=float, default=0)
a = ap.parse_args()
if a.plain:
  from jaxtickets.models import layers as L
  _orig = L.conv3x3_reflect
  L.conv3x3_reflect = lambda x, k, b, same_trick=None, matmul_grad=None: _orig(x, k, b, False, False)
mc = ml_collections.ConfigDict(dict(name='adain', width=a.width, train_encoder=bool(a.train_encoder), dtype='float32',
      content_weight=1.0, style_weight=a.style_weight, content_taps=a.taps))
m = adain.Model(mc)
key = jax.random.PRNGKey(a.seed)
vgg = m.init_vgg(jax.random.fold_in(key, 1)); params = m.init(jax.random.fold_in(key, 2), vgg)
def load(kind, size):
  return [D._to_float(D._resize(D.load_image(p), size)) for p in D.demo_images(kind)]
C, S = load('content', a.load), load('style', a.load)
EC, ES = load('eval_content', a.load), load('eval_style', a.load)
rng = np.random.default_rng(a.seed)
def crop(img, c):
  h, w = img.shape[:2]; y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1); return img[y:y+c, x:x+c]
def cc(img, c):
  h, w = img.shape[:2]; y, x = (h - c)//2, (w - c)//2; return img[y:y+c, x:x+c]
sched = optax.cosine_decay_schedule(a.lr, a.steps) if a.cosine else optax.constant_schedule(a.lr)
tx = optax.adam(sched); opt = tx.init(params)
@jax.jit
def step(params, opt, c, s):
  def lossf(p):
    l, met = m.loss(p, vgg, c, s, None)
    if a.pixel:
      rec = m.stylize(p, vgg, c, c)
      pix = jnp.mean((rec - c) ** 2); l = l + a.pixel * pix; met = dict(met, pixel=pix)
    return l, met
  (l, met), g = jax.value_and_grad(lossf, has_aux=True)(params)
  u, opt = tx.update(g, opt, params); return optax.apply_updates(params, u), opt, met
tr_c = jnp.stack([cc(x, a.crop) for x in C]); ev_c = jnp.stack([cc(x, a.crop) for x in EC]); ev_s = jnp.stack([cc(x, a.crop) for x in ES])
@jax.jit
def evalf(params):
  rec = jnp.clip(jax.vmap(lambda c: m.stylize(params, vgg, c[None], c[None])[0])(ev_c), 0, 1)
  sty = jnp.clip(jax.vmap(lambda c, s: m.stylize(params, vgg, c[None], s[None])[0])(ev_c, ev_s), 0, 1)
  ps = jax.vmap(E.psnr)(rec, ev_c); flat = jax.vmap(lambda c: E.psnr(jnp.broadcast_to(c.mean((0,1)), c.shape), c))(ev_c)
  return ps, flat, rec, sty
t0 = time.time()
for i in range(a.steps):
  c = jnp.stack([crop(C[j], a.crop) for j in rng.integers(0, len(C), a.batch)])
  s = jnp.stack([crop(S[j], a.crop) for j in rng.integers(0, len(S), a.batch)])
  params, opt, met = step(params, opt, c, c if a.autoenc else s)
  if (i + 1) % max(1, a.steps // 5) == 0:
    ps, flat, _, _ = evalf(params)
    trps = jax.vmap(E.psnr)(jnp.clip(jax.vmap(lambda c: m.stylize(params, vgg, c[None], c[None])[0])(tr_c), 0, 1), tr_c)
    print(f'{a.name} step {i+1} loss {float(met["total"]):.3f} c {float(met["content"]):.3f} s {float(met["style"]):.3f} psnr {float(ps.mean()):.2f} train_psnr {float(trps.mean()):.2f} flat {float(flat.mean()):.2f} t {time.time()-t0:.0f}s', flush=True)
ps, flat, rec, sty = evalf(params)
grid = np.concatenate([np.concatenate(list(x), 1) for x in (np.asarray(ev_c), np.asarray(rec), np.asarray(ev_s), np.asarray(sty))], 0)
Image.fromarray((grid * 255).astype(np.uint8)).resize((grid.shape[1]*2, grid.shape[0]*2), Image.NEAREST).save(f'/tmp/probe/{a.name}.png')
print(json.dumps(dict(name=a.name, psnr=float(ps.mean()), flat=float(flat.mean()), args=vars(a))), flush=True)
