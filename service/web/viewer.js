// The cloudpose viewer: send a cloud to the service, draw the cloud and the object's model at the
// returned pose. Poses follow the API's convention: pose_matrix M places the model (canonical
// frame, the mesh file's coordinates) over the cloud, observed = M · canonical (column vectors),
// in the cloud's units; the model's geometry comes in object units and is divided by the
// answer's scale (the cloud's units in object units).
import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';

const byId = (id) => document.getElementById(id);
const BACKGROUND = 0x15191f;
const CLOUD_COLOUR = 0xffa040;
const FRAME_COLOUR = 0xb8c0cc;
const MODEL_COLOUR = 0x4aa8ff;
// One colour per detection, far apart in hue.
const DETECTION_COLOURS = [0x4aa8ff, 0x46c37b, 0xef5f5f, 0xc77dff, 0xffd23f, 0x2ec4b6, 0xff7eb6, 0x9ef01a];
const MAX_SHOWN_POINTS = 5000;

const state = {
  objects: new Map(), // name -> description from GET /v1/objects
  geometry: new Map(), // name -> Promise of GET /v1/objects/{name}/geometry
  answer: null, // the last pose or detect answer
  poses: [], // [{object, matrix (THREE.Matrix4), scale, colour, answer}]
  selected: 0,
  points: null, // Float32Array of the shown cloud
  mode: 'pose',
};

// --- 3D view ---------------------------------------------------------------------------------
const canvas = byId('scene');
const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
renderer.setPixelRatio(window.devicePixelRatio);
renderer.setClearColor(BACKGROUND);
const scene = new THREE.Scene();
const camera = new THREE.PerspectiveCamera(40, 1, 0.01, 1000);
camera.add(new THREE.DirectionalLight(0xffffff, 2.2));
scene.add(camera, new THREE.AmbientLight(0xffffff, 0.9));
const root = new THREE.Group(); // the cloud and the models, moved as one for the canonical view
scene.add(root);
const controls = new OrbitControls(camera, canvas);
controls.addEventListener('change', render);

function render() {
  renderer.render(scene, camera);
}

function resize() {
  const { clientWidth: width, clientHeight: height } = canvas.parentElement;
  renderer.setSize(width, height, false);
  camera.aspect = width / Math.max(1, height);
  camera.updateProjectionMatrix();
  render();
}
new ResizeObserver(resize).observe(canvas.parentElement);

function disposeChildren(group) {
  for (const child of [...group.children]) {
    group.remove(child);
    child.traverse((node) => {
      node.geometry?.dispose();
      node.material?.dispose();
    });
  }
}

function cloudPoints(points, colour, size) {
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute('position', new THREE.BufferAttribute(points, 3));
  // Sizes in pixels: a cloud stays readable at every zoom.
  return new THREE.Points(geometry, new THREE.PointsMaterial({ color: colour, size, sizeAttenuation: false }));
}

function modelObject(geometry, scale, colour, size) {
  // The geometry is in object units; the pose is in the cloud's: divide by the answer's scale.
  const group = new THREE.Group();
  const factor = 1 / scale;
  if (geometry.mesh) {
    const positions = new Float32Array(geometry.mesh.vertices.flat().map((value) => value * factor));
    const mesh = new THREE.BufferGeometry();
    mesh.setAttribute('position', new THREE.BufferAttribute(positions, 3));
    mesh.setIndex(geometry.mesh.faces.flat());
    mesh.computeVertexNormals();
    const material = new THREE.MeshStandardMaterial({
      color: colour, roughness: 0.55, metalness: 0.0, transparent: true, opacity: 0.4,
      side: THREE.DoubleSide, depthWrite: false,
    });
    group.add(new THREE.Mesh(mesh, material));
  } else {
    const positions = new Float32Array(geometry.points.flat().map((value) => value * factor));
    group.add(cloudPoints(positions, colour, size * 0.8));
  }
  return group;
}

function canonicalView() {
  return document.querySelector('input[name=frame]:checked').value === 'canonical' && state.poses.length > 0;
}

// The transform applied to everything: identity, or the selected pose undone (canonical view).
function worldMatrix() {
  return canonicalView() ? state.poses[state.selected].matrix.clone().invert() : new THREE.Matrix4();
}

let drawing = 0; // the latest draw wins when several overlap

async function draw(refit) {
  const generation = ++drawing;
  const geometries = await Promise.all(state.poses.map((pose) => geometryOf(pose.object)));
  if (generation !== drawing) return;
  disposeChildren(root);
  if (!state.points) return render();
  const world = worldMatrix();
  const size = (state.mode === 'scene' ? 2 : 3.5) * window.devicePixelRatio;
  const cloud = cloudPoints(state.points, state.mode === 'scene' ? FRAME_COLOUR : CLOUD_COLOUR, size);
  cloud.matrixAutoUpdate = false;
  cloud.matrix.copy(world);
  cloud.visible = byId('show-cloud').checked;
  root.add(cloud);
  let selectedModel = null;
  for (const [index, pose] of state.poses.entries()) {
    const model = modelObject(geometries[index], pose.scale, pose.colour, size);
    model.matrixAutoUpdate = false;
    model.matrix.multiplyMatrices(world, pose.matrix);
    model.visible = byId('show-model').checked;
    if (state.poses.length > 1 && index !== state.selected) {
      model.traverse((node) => { if (node.material) node.material.opacity = 0.25; });
    }
    root.add(model);
    if (index === state.selected) selectedModel = model;
  }
  // The canonical view centres the selected object; the observed one shows the whole cloud.
  if (refit) {
    const canonical = canonicalView();
    fitCamera(canonical ? selectedModel : cloud, state.mode === 'scene' && !canonical);
  }
  render();
}

// Frames are seen as their sensor saw them (at the origin, looking along +z, image y down);
// single clouds and the canonical view from a fixed oblique direction.
function fitCamera(object, fromSensor) {
  object.updateMatrixWorld(true);
  const sphere = new THREE.Box3().setFromObject(object).getBoundingSphere(new THREE.Sphere());
  const radius = Math.max(sphere.radius, 1e-6);
  camera.near = radius / 100;
  camera.far = radius * 100;
  if (fromSensor) {
    camera.up.set(0, -1, 0);
    camera.position.set(0, 0, 0);
  } else {
    camera.up.set(0, 1, 0);
    const direction = new THREE.Vector3(0.9, 0.7, 1.6).normalize();
    camera.position.copy(sphere.center).addScaledVector(direction, radius * 2.6);
  }
  camera.updateProjectionMatrix();
  controls.target.copy(sphere.center);
  controls.update();
}

// --- the service ----------------------------------------------------------------------------
function authHeaders() {
  const key = byId('api-key').value.trim();
  return key ? { 'X-API-Key': key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : text.slice(0, 200);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

function geometryOf(name) {
  if (!state.geometry.has(name)) {
    const request = api(`/v1/objects/${encodeURIComponent(name)}/geometry`);
    request.catch(() => state.geometry.delete(name)); // a later try asks again
    state.geometry.set(name, request);
  }
  return state.geometry.get(name);
}

function setStatus(text, error = false) {
  const status = byId('status');
  status.textContent = text;
  status.classList.toggle('error', error);
}

async function loadObjects() {
  const listing = await api('/v1/objects');
  const select = byId('object');
  select.replaceChildren();
  for (const description of listing.objects) {
    state.objects.set(description.name, description);
    select.add(new Option(description.name, description.name, false, description.name === listing.default));
  }
  await loadExamples();
  setStatus(`${listing.objects.length} object(s) served. Choose a cloud file or an example.`);
}

async function loadExamples() {
  const select = byId('example');
  select.replaceChildren();
  const name = byId('object').value;
  if (!name) return;
  const listing = await api(`/v1/objects/${encodeURIComponent(name)}/examples`);
  for (const example of listing.examples) select.add(new Option(example.file, example.file));
  byId('run-example').disabled = listing.examples.length === 0;
}

function thinned(points) {
  const step = Math.max(1, Math.ceil(points.length / MAX_SHOWN_POINTS));
  const kept = points.filter((_, index) => index % step === 0);
  return new Float32Array(kept.flat());
}

// The request for a cloud file: JSON files go as JSON bodies, the rest as multipart uploads.
async function prepare(file, frame) {
  if (file.name.toLowerCase().endsWith('.json')) {
    const text = await file.text();
    let payload;
    try {
      payload = JSON.parse(text);
    } catch (error) {
      throw new Error(`${file.name} is not valid JSON: ${error.message}`);
    }
    if (!Array.isArray(payload.points)) throw new Error(`${file.name} has no "points" list`);
    return {
      options: { method: 'POST', headers: { 'content-type': 'application/json' }, body: text },
      points: async () => thinned(payload.points),
    };
  }
  const form = () => {
    const body = new FormData();
    body.append('file', file, file.name);
    return body;
  };
  return {
    options: { method: 'POST', body: form() },
    points: async () => {
      const shown = await api(`/v1/clouds/read?frame=${frame}`, { method: 'POST', body: form() });
      return new Float32Array(shown.points.flat());
    },
  };
}

function matrixOf(rows) {
  return new THREE.Matrix4().set(...rows.flat());
}

async function send(file) {
  const mode = document.querySelector('input[name=mode]:checked').value;
  const object = byId('object').value;
  const refine = byId('refine').checked;
  byId('pose-result').textContent = '';
  setStatus(`Sending ${file.name}…`);
  try {
    const request = await prepare(file, mode === 'scene');
    const path = mode === 'scene'
      ? '/v1/detect'
      : `/v1/objects/${encodeURIComponent(object)}/pose?refine=${refine}`;
    const started = performance.now();
    const answering = api(path, request.options).then((answer) => ({ answer, roundTripMs: performance.now() - started }));
    const [{ answer, roundTripMs }, points] = await Promise.all([answering, request.points()]);
    state.mode = mode;
    state.answer = answer;
    state.points = points;
    state.selected = 0;
    const found = mode === 'scene' ? answer.detections : [answer];
    state.poses = found.map((pose, index) => ({
      object: pose.object,
      matrix: matrixOf(pose.pose_matrix),
      scale: pose.scale,
      colour: mode === 'scene' ? DETECTION_COLOURS[index % DETECTION_COLOURS.length] : MODEL_COLOUR,
      answer: pose,
    }));
    await showAnswer(file.name, roundTripMs);
    byId('pose-result').textContent = JSON.stringify(answer, null, 2);
    setStatus(`${file.name}: answered in ${roundTripMs.toFixed(0)} ms.`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

// --- the panel -------------------------------------------------------------------------------
function fixed(value, digits) {
  return value === null || value === undefined ? '—' : Number(value).toFixed(digits);
}

function fillList(element, entries) {
  element.replaceChildren();
  for (const [term, value] of entries) {
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    dd.textContent = value;
    element.append(dt, dd);
  }
}

function showAnswer(fileName, roundTripMs) {
  const answer = state.answer;
  const scene = state.mode === 'scene';
  byId('result-title').textContent = scene ? `Detections in ${fileName}` : `Pose of ${fileName}`;
  byId('legend').innerHTML = scene
    ? '<span class="swatch frame"></span>frame <span class="swatch model"></span>each detection in its colour'
    : '<span class="swatch cloud"></span>cloud <span class="swatch model"></span>model at the pose';
  const list = byId('detections');
  list.replaceChildren();
  if (scene) {
    for (const [index, pose] of state.poses.entries()) {
      const item = document.createElement('li');
      item.dataset.index = index;
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = `#${pose.colour.toString(16).padStart(6, '0')}`;
      const confidence = pose.answer.confidence ? pose.answer.confidence.confidence : null;
      item.append(swatch, `${index + 1}. ${pose.object}, confidence ${fixed(confidence, 3)}${pose.answer.found ? '' : ' (not found)'}`);
      item.addEventListener('click', () => select(index, canonicalView()));
      list.append(item);
    }
  }
  const common = [
    ['server time', `${fixed(answer.server_time_ms, 1)} ms`],
    ['round trip', `${fixed(roundTripMs, 1)} ms`],
    ['points', String(answer.n_points)],
  ];
  if (scene) common.push(['segments', String(answer.segments)], ['complete', String(answer.complete)]);
  state.common = common;
  return select(0, true);
}

function select(index, refit = false) {
  state.selected = index;
  for (const item of byId('detections').children) {
    item.classList.toggle('selected', Number(item.dataset.index) === index);
  }
  const pose = state.poses[index];
  const stateLine = byId('state');
  const table = byId('pose-matrix');
  table.replaceChildren();
  if (!pose) {
    stateLine.textContent = 'No detection in this frame.';
    stateLine.className = 'state not-found';
    fillList(byId('summary'), state.common);
    fillList(byId('angles'), []);
    showWarnings(state.answer.warnings || []);
    return draw(refit);
  }
  const answer = pose.answer;
  const confidence = answer.confidence || {};
  stateLine.textContent = answer.found
    ? `found (confident: ${confidence.confident ? 'yes' : 'no'})`
    : `not found${answer.reason ? `: ${answer.reason}` : ''}`;
  stateLine.className = `state ${answer.found ? 'found' : 'not-found'}`;
  const symmetry = answer.symmetry || state.objects.get(pose.object)?.symmetry;
  fillList(byId('summary'), [
    ['object', pose.object],
    ['confidence', fixed(confidence.confidence, 3)],
    ['fitness', fixed(confidence.fitness, 3)],
    ['inlier RMSE', confidence.inlier_rmse_percent == null ? '—' : `${fixed(confidence.inlier_rmse_percent, 3)} % of the diagonal`],
    ['refined', String(answer.refined)],
    ['units', `${answer.units || 'as the object'} (scale ${fixed(answer.scale, 4)})`],
    ['symmetry', symmetry ? `${symmetry.kind}${symmetry.order > 1 ? `, order ${symmetry.order}` : ''}` : '—'],
    ...state.common,
  ]);
  for (const [row, values] of answer.pose_matrix.entries()) {
    const tr = table.insertRow();
    for (const [column, value] of values.entries()) {
      const cell = tr.insertCell();
      cell.dataset.row = row;
      cell.dataset.column = column;
      cell.textContent = fixed(value, 4);
    }
  }
  const euler = new THREE.Euler().setFromRotationMatrix(pose.matrix, 'XYZ');
  const degrees = [euler.x, euler.y, euler.z].map((angle) => fixed(THREE.MathUtils.radToDeg(angle), 2));
  fillList(byId('angles'), [
    ['quaternion (x, y, z, w)', answer.quaternion_xyzw.map((value) => fixed(value, 4)).join(', ')],
    ['Euler XYZ (°)', degrees.join(', ')],
    ['position', answer.pose_matrix.slice(0, 3).map((row) => fixed(row[3], 3)).join(', ')],
  ]);
  const frameWarnings = state.mode === 'scene' ? state.answer.warnings || [] : [];
  showWarnings([...(answer.warnings || []), ...frameWarnings]);
  return draw(refit);
}

function showWarnings(warnings) {
  const list = byId('warnings');
  list.replaceChildren();
  for (const text of warnings.length ? warnings : ['none']) {
    const item = document.createElement('li');
    item.textContent = text;
    if (!warnings.length) item.className = 'muted';
    list.append(item);
  }
}

// --- inputs ----------------------------------------------------------------------------------
byId('cloud-file').addEventListener('change', (event) => {
  const [file] = event.target.files;
  if (file) send(file);
});

byId('run-example').addEventListener('click', async () => {
  const object = byId('object').value;
  const name = byId('example').value;
  if (!name) return;
  try {
    const response = await fetch(`/v1/objects/${encodeURIComponent(object)}/examples/${encodeURIComponent(name)}`, {
      headers: authHeaders(),
    });
    if (!response.ok) throw new Error(`${response.status}: could not fetch the example ${name}`);
    await send(new File([await response.blob()], name));
  } catch (error) {
    setStatus(error.message, true);
  }
});

byId('object').addEventListener('change', () => loadExamples().catch((error) => setStatus(error.message, true)));
for (const input of document.querySelectorAll('input[name=frame]')) input.addEventListener('change', () => draw(true));
for (const id of ['show-cloud', 'show-model']) byId(id).addEventListener('change', () => draw(false));

const view = byId('view');
view.addEventListener('dragover', (event) => {
  event.preventDefault();
  view.classList.add('dropping');
});
view.addEventListener('dragleave', () => view.classList.remove('dropping'));
view.addEventListener('drop', (event) => {
  event.preventDefault();
  view.classList.remove('dropping');
  const [file] = event.dataTransfer.files;
  if (file) send(file);
});

resize();
loadObjects().catch((error) => setStatus(`${error.message} (an API key may be needed: enter it and reload)`, true));
