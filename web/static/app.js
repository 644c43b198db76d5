// The NHS.UK frontend's components, initialised once the page has loaded.
// Every page works without this script.
import { initAll } from './nhsuk/nhsuk-frontend.min.js'

document.body.classList.add('js-enabled', 'nhsuk-frontend-supported')
initAll()
