// The page's glue: Trunk loads the wasm module and fires TrunkApplicationStarted.
const status = document.getElementById('status')
const list = document.getElementById('files')

function start () {
  const cairn = window.wasmBindings
  const node = new cairn.Node()
  document.getElementById('version').textContent = cairn.version()
  status.textContent = 'Ready.'
  document.body.dataset.ready = 'true'

  async function add (file) {
    const profile = document.getElementById('profile').value
    status.textContent = `Hashing ${file.name}…`
    try {
      const started = performance.now()
      const cid = await node.add(new Uint8Array(await file.arrayBuffer()), profile)
      const ms = performance.now() - started
      const li = document.createElement('li')
      const link = `${location.origin}${location.pathname}#/cid/${cid}`
      li.innerHTML = '<strong></strong> <span class="size"></span><br><code class="cid"></code><br><a class="share">share link</a>'
      li.querySelector('strong').textContent = file.name
      li.querySelector('.size').textContent = `${file.size.toLocaleString()} bytes`
      li.querySelector('.cid').textContent = cid
      li.querySelector('.share').href = link
      list.prepend(li)
      status.textContent = `Added ${file.name} in ${ms.toFixed(0)} ms.`
    } catch (e) {
      status.textContent = `Could not add ${file.name}: ${e.message}`
    }
  }

  document.getElementById('file').addEventListener('change', (e) => {
    for (const f of e.target.files) add(f)
  })
  const drop = document.getElementById('drop')
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over') })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (e) => {
    e.preventDefault()
    drop.classList.remove('over')
    for (const f of e.dataTransfer.files) add(f)
  })
}

if (window.wasmBindings) start()
else addEventListener('TrunkApplicationStarted', start)
